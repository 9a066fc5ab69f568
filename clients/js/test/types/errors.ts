// Checked by `tsc -p test/types`: what the declarations must refuse.
import { subscribe } from "realtime-gateway-client";

// @ts-expect-error: no such transport
subscribe("c", { transports: ["carrier-pigeon"] });
// @ts-expect-error: a token is a string or a function giving one
subscribe("c", { token: 42 });
// @ts-expect-error: onMessage takes a Message
subscribe("c", { onMessage: (m: number) => m });
// @ts-expect-error: share is one of its modes
subscribe("c", { share: "tabs" });
// @ts-expect-error: no such option
subscribe("c", { reconnect: true });
