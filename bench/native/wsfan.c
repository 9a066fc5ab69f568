/*
 * wsfan: WebSocket subscribers for the fan-out runs, in C, so the generator is not the limit.
 *
 *   wsfan HOST PORT PATH CLIENTS MESSAGES MODE LATENCY_FILE [CONCURRENCY]
 *
 * MODE is "gateway" (frames are the gateway's {"type":"message",...,"data":"..."})
 * or "raw" (a frame's payload is the published data, as Nchan sends it).
 * The published data is "<seq> <unix time sent> <padding>" (bench/tally.py);
 * seq -1 is a warm-up message that marks a subscriber ready.
 *
 * Why: bench/wsclients.py, in Python on one core, spends ~10 us a frame;
 * at 10,000 subscribers and 10 msg/s (100,000 frames a second) it was at
 * 98 % of its core on an AMD EPYC, so the latencies it measured were its
 * own queueing, for the gateway and Nchan alike. Here a frame costs its
 * share of one read(2) and a few hundred instructions.
 *
 * Talks to bench/native.py on its standard streams:
 *   stdout, every 100 ms:  status CONNECTED OPEN READY ALIVE_READY DELIVERED
 *                                 LAST_DELIVERY_AT OPENED CONNECT_ERRORS
 *                                 HANDSHAKE_ERRORS LOST_CONNECTIONS GAPS CLOSES PARSE_ERRORS
 *                          (OPENED: 1 once every connection was tried)
 *   stdin closed or "stop": every connection is closed, the latencies (seconds, native
 *     doubles) are written to LATENCY_FILE, then one line per client:
 *                          client READY NEXT_SEQ LOST DUPLICATES CLOSED
 *   and a last line "end".
 * One thread, epoll, level-triggered; pings are answered with pongs; a
 * client frame is masked, as RFC 6455 requires.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 16384
#define STDIN_TAG UINT64_MAX

enum { CONNECTING, HANDSHAKE, OPEN, DONE };

typedef struct {
    int fd, state, ready, closed;
    long next_seq, lost, dups;
    size_t used;
    char *buf;
} client_t;

static client_t *clients;
static long n_clients, n_messages;
static int gateway_mode, epfd;
static const char *host, *path;
static struct sockaddr_in addr;
static double *latencies;
static long n_latencies, lat_cap;
static long connected, open_now, ready, alive_ready, delivered, started, in_flight, concurrency;
static long err_connect, err_handshake, err_lost, err_gap, err_close, err_parse;
static double last_delivery_at;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void send_frame(client_t *c, int opcode, const char *payload, size_t size) {
    unsigned char frame[200];
    if (size > 125) size = 125; /* control frames only: at most 125 bytes */
    frame[0] = 0x80 | opcode;
    frame[1] = 0x80 | (unsigned char)size;
    uint32_t mask = (uint32_t)rand();
    memcpy(frame + 2, &mask, 4);
    for (size_t i = 0; i < size; i++) frame[6 + i] = payload[i] ^ frame[2 + i % 4];
    if (write(c->fd, frame, 6 + size) < 0 && errno != EAGAIN) { /* a lost link shows on read */ }
}

static void finish(client_t *c, long *counter) {
    if (c->state == DONE) return;
    if (counter) (*counter)++;
    if (c->state == CONNECTING || c->state == HANDSHAKE) in_flight--;
    if (c->state == OPEN) { open_now--; if (c->ready) alive_ready--; }
    c->state = DONE;
    c->closed = 1;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static void start_next(void) {
    while (started < n_clients && in_flight < concurrency) {
        client_t *c = &clients[started];
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)started};
        started++;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        c->buf = malloc(BUF);
        if (c->fd < 0 || !c->buf) { c->state = DONE; c->closed = 1; err_connect++; continue; }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
            close(c->fd); c->state = DONE; c->closed = 1; err_connect++; continue;
        }
        c->state = CONNECTING;
        in_flight++;
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }
}

static void on_data(client_t *c, const char *data, size_t size, double now) {
    char text[64];
    size_t n = size < sizeof text - 1 ? size : sizeof text - 1;
    memcpy(text, data, n);
    text[n] = 0;
    char *end;
    long seq = strtol(text, &end, 10);
    if (end == text || *end != ' ') { err_parse++; return; }
    double sent = strtod(end + 1, &end);
    if (*end != ' ' && *end != 0) { err_parse++; return; }
    if (seq == -1) {
        if (!c->ready) { c->ready = 1; ready++; alive_ready++; }
        return;
    }
    if (seq == c->next_seq) c->next_seq = seq + 1;
    else if (seq < c->next_seq) { c->dups++; return; }
    else { c->lost += seq - c->next_seq; c->next_seq = seq + 1; }
    if (n_latencies < lat_cap) latencies[n_latencies++] = now - sent;
    delivered++;
    last_delivery_at = now;
}

static void on_text(client_t *c, const char *payload, size_t size, double now) {
    if (!gateway_mode) { on_data(c, payload, size, now); return; }
    if (memmem(payload, size, "\"type\":\"gap\"", 12)) { err_gap++; return; }
    if (!memmem(payload, size, "\"type\":\"message\"", 16)) return; /* acks and the like */
    const char *key = memmem(payload, size, "\"data\":\"", 8);
    if (!key) { err_parse++; return; }
    const char *start = key + 8, *stop = memchr(start, '"', payload + size - start);
    if (!stop || memchr(start, '\\', stop - start)) { err_parse++; return; }
    on_data(c, start, stop - start, now);
}

/* Every whole frame in the buffer; returns bytes consumed, or -1 when the client is done. */
static long frames(client_t *c, double now) {
    const unsigned char *b = (const unsigned char *)c->buf;
    size_t offset = 0, total = c->used;
    while (total - offset >= 2) {
        int fin = b[offset] & 0x80, opcode = b[offset] & 0x0F;
        uint64_t size = b[offset + 1] & 0x7F;
        size_t start = offset + 2;
        if (size == 126) {
            if (total - offset < 4) break;
            size = ((uint64_t)b[offset + 2] << 8) | b[offset + 3];
            start = offset + 4;
        } else if (size == 127) {
            if (total - offset < 10) break;
            size = 0;
            for (int i = 2; i < 10; i++) size = (size << 8) | b[offset + i];
            start = offset + 10;
        }
        if (size > BUF - 16) { finish(c, &err_parse); return -1; } /* larger than we take */
        if (start + size > total) break;
        const char *payload = c->buf + start;
        offset = start + size;
        if (opcode == 1 || opcode == 2) {
            if (!fin) { finish(c, &err_parse); return -1; } /* fragments: not in these runs */
            on_text(c, payload, size, now);
        } else if (opcode == 9) {
            send_frame(c, 10, payload, size);
        } else if (opcode == 8) {
            send_frame(c, 8, payload, size >= 2 ? 2 : 0);
            finish(c, &err_close);
            return -1;
        }
    }
    return (long)offset;
}

static void handshake(client_t *c) {
    unsigned char key[16];
    char key64[32], request[1024];
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 16; i++) key[i] = (unsigned char)rand();
    int k = 0;
    for (int i = 0; i < 15; i += 3) {
        uint32_t v = key[i] << 16 | key[i + 1] << 8 | key[i + 2];
        key64[k++] = abc[v >> 18 & 63]; key64[k++] = abc[v >> 12 & 63];
        key64[k++] = abc[v >> 6 & 63]; key64[k++] = abc[v & 63];
    }
    uint32_t v = key[15] << 16;
    key64[k++] = abc[v >> 18 & 63]; key64[k++] = abc[v >> 12 & 63];
    key64[k++] = '='; key64[k++] = '='; key64[k] = 0;
    int size = snprintf(request, sizeof request,
                        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n",
                        path, host, ntohs(addr.sin_port), key64);
    if (write(c->fd, request, size) != size) { finish(c, &err_connect); return; }
    c->state = HANDSHAKE;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(c - clients)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void readable(client_t *c, double now) {
    for (;;) {
        ssize_t got = read(c->fd, c->buf + c->used, BUF - c->used);
        if (got == 0) { finish(c, c->state == OPEN ? &err_lost : &err_handshake); return; }
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            finish(c, c->state == OPEN ? &err_lost : &err_handshake);
            return;
        }
        c->used += got;
        if (c->state == HANDSHAKE) {
            char *end = memmem(c->buf, c->used, "\r\n\r\n", 4);
            if (!end) { if (c->used == BUF) finish(c, &err_handshake); continue; }
            if (c->used < 12 || memcmp(c->buf + 8, " 101", 4) != 0) {
                finish(c, &err_handshake); return;
            }
            size_t head = end + 4 - c->buf;
            memmove(c->buf, c->buf + head, c->used - head);
            c->used -= head;
            c->state = OPEN;
            in_flight--;
            connected++;
            open_now++;
        }
        if (c->state == OPEN) {
            long used = frames(c, now);
            if (used < 0) return;
            memmove(c->buf, c->buf + used, c->used - used);
            c->used -= used;
        }
        if (got < BUF / 2) return; /* the socket is most likely empty: let epoll say */
    }
}

static void status(void) {
    printf("status %ld %ld %ld %ld %ld %.6f %d %ld %ld %ld %ld %ld %ld\n", connected, open_now, ready,
           alive_ready, delivered, last_delivery_at, started == n_clients && in_flight == 0,
           err_connect, err_handshake, err_lost, err_gap, err_close, err_parse);
    fflush(stdout);
}

static void stop_all(const char *latency_file) {
    for (long i = 0; i < started; i++) {
        client_t *c = &clients[i];
        if (c->state != DONE) {
            if (c->state == OPEN && c->ready) alive_ready--;
            epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            c->state = DONE;
        }
    }
    FILE *out = fopen(latency_file, "wb");
    if (!out || fwrite(latencies, sizeof(double), n_latencies, out) != (size_t)n_latencies) {
        perror(latency_file);
        exit(1);
    }
    fclose(out);
    for (long i = 0; i < n_clients; i++) {
        client_t *c = &clients[i];
        printf("client %d %ld %ld %ld %d\n", c->ready, c->next_seq, c->lost, c->dups, c->closed);
    }
    printf("end\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: wsfan HOST PORT PATH CLIENTS MESSAGES gateway|raw LATENCY_FILE "
                        "[CONCURRENCY]\n");
        return 2;
    }
    host = argv[1];
    path = argv[3];
    n_clients = atol(argv[4]);
    n_messages = atol(argv[5]);
    gateway_mode = strcmp(argv[6], "gateway") == 0;
    concurrency = argc > 8 ? atol(argv[8]) : 256;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "wsfan: HOST must be an IPv4 address: %s\n", host);
        return 2;
    }
    srand((unsigned)getpid());
    clients = calloc(n_clients, sizeof *clients);
    lat_cap = n_clients * (n_messages > 0 ? n_messages : 1);
    latencies = malloc(sizeof(double) * lat_cap);
    epfd = epoll_create1(0);
    if (!clients || !latencies || epfd < 0) { perror("wsfan"); return 1; }
    struct epoll_event in = {.events = EPOLLIN, .data.u64 = STDIN_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &in);
    start_next();
    struct epoll_event events[512];
    double next_status = 0;
    for (;;) {
        int n = epoll_wait(epfd, events, 512, 50);
        double now = now_s();
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == STDIN_TAG) {
                char line[64];
                ssize_t got = read(0, line, sizeof line);
                if (got <= 0 || (got >= 4 && memcmp(line, "stop", 4) == 0)) {
                    stop_all(argv[7]);
                    return 0;
                }
                continue;
            }
            client_t *c = &clients[events[i].data.u64];
            if (c->state == DONE) continue;
            if (c->state == CONNECTING) {
                int error = 0;
                socklen_t len = sizeof error;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len);
                if (error || (events[i].events & (EPOLLERR | EPOLLHUP))) finish(c, &err_connect);
                else handshake(c);
                continue;
            }
            readable(c, now);
        }
        start_next();
        if (now >= next_status) {
            status();
            next_status = now + 0.1;
        }
    }
}
