// The event-stream grammar (WHATWG), as much as the gateway uses.

export class EventStreamParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.id = "";
    this.data = [];
  }

  push(text) {
    const buf = this.buffer + text;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i];
      if (c !== "\n" && c !== "\r") continue;
      if (c === "\r" && i + 1 === buf.length) break; // maybe half of a CR LF
      this.line(buf.slice(start, i));
      if (c === "\r" && buf[i + 1] === "\n") i++;
      start = i + 1;
    }
    this.buffer = buf.slice(start);
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line[0] === ":") return; // a comment: the heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
    // "retry" is ignored: reconnecting is ours to pace.
  }

  dispatch() {
    const { event, id, data } = this;
    this.reset();
    if (data.length === 0) return; // e.g. the closing "retry:" block
    this.onEvent({ event: event || "message", id, data: data.join("\n") });
  }
}
