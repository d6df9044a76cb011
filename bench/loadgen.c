/*
 * loadgen.c -- WebSocket load generator for genesis_trio's benchmarks.
 *
 * Single-threaded, epoll, non-blocking sockets, RFC 6455 client framing with
 * masking. With --deflate every link offers permessage-deflate (RFC 7692) the
 * way browsers do ("permessage-deflate; client_max_window_bits"), and
 * compresses every data message with zlib when the server accepts, with the
 * context takeover and window size the server negotiated. Compiled at run
 * time by bench/build.py (gcc -O2 ... -lz); never committed as a binary.
 *
 * Dialects:
 *   raw      send a text message of --size bytes, the server echoes it
 *   genesis  protocol genesis.v1.json: hello/welcome, msg/batch frames with
 *            consecutive seq numbers, cumulative acks, ping -> pong
 *   socketio Socket.IO v5 over Engine.IO v4, WebSocket transport only (--path
 *            /socket.io/?EIO=4&transport=websocket): read the open packet
 *            0{...}, send 40, wait for 40{...}; then send 42["echo","xx.."]
 *            (the publisher: 42["bcast","xx.."]) and count received 42
 *            frames; Engine.IO pings 2 are answered with 3
 *
 * Modes (first argument):
 *   echo    --conns N connections, each keeping --inflight messages in
 *           flight (A: 1 conn x 1, B: 1 conn x 100, C: 1000 conns x 1);
 *           genesis messages are addressed to the sender itself, --k
 *           messages per frame
 *   fanout  --subs S subscribers and one publisher (unless --no-pub) that
 *           keeps the subscribers at most --inflight messages behind
 *   idle    connections that only answer pings (genesis: after welcome;
 *           socketio: after 40{...}; raw with permessage-deflate: after one
 *           echo, so that both sides hold their zlib streams); stdin commands
 *           "connect N" (grow to N, reply "connected OPEN FAILED SECONDS
 *           LOST MAXPINGGAP LATEPINGS REFUSED": links lost since the start,
 *           the longest gap between two genesis pings on one link, in
 *           seconds, how many gaps exceeded 6 s, and with --deflate how many
 *           links the server refused permessage-deflate) and "quit"
 *   storm   --conns N genesis clients; after "ready" every lost link
 *           reconnects with exponential backoff and full jitter (like the
 *           Python client); reports when all have a new welcome
 *   sink    a minimal C WebSocket echo server on --port, to measure this
 *           generator's own ceiling
 *
 * Results are one JSON object on the last line of stdout; "mark start" and
 * "mark end" lines bracket the measurement window, "ready ..." and
 * "connected ..." lines answer the interactive modes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* ------------------------------------------------------------------------ */
/* options                                                                   */

enum { MODE_ECHO, MODE_FANOUT, MODE_IDLE, MODE_STORM, MODE_SINK };
enum { DIALECT_RAW, DIALECT_GENESIS, DIALECT_SOCKETIO };

static struct {
    int mode, dialect;
    char host[64];
    int port;
    char path[160];
    int conns, subs, inflight, size, k;
    double duration, warmup, timeout;
    int connect_concurrency;
    int no_pub, deflate;
    char topic[64];
    char prefix[32];
    double backoff_initial, backoff_cap, attempt_timeout;
} opt = {
    .mode = MODE_ECHO, .dialect = DIALECT_RAW, .host = "127.0.0.1", .port = 8000,
    .path = "/ws", .conns = 1, .subs = 500, .inflight = 1, .size = 64, .k = 1,
    .duration = 3.0, .warmup = 0.5, .timeout = 120.0, .connect_concurrency = 200,
    .topic = "bench", .prefix = "lg", .backoff_initial = 0.1, .backoff_cap = 10.0,
    .attempt_timeout = 10.0,
};

/* ------------------------------------------------------------------------ */
/* small utilities                                                           */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double ns_to_s(uint64_t ns) { return (double)ns / 1e9; }

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_next(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static double rng_unit(void) { return (double)(rng_next() >> 11) / 9007199254740992.0; }

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    printf("{\"ok\":false,\"fatal\":\"see stderr\"}\n");
    exit(2);
}

/* distinct error messages, reported in the JSON result */
#define MAX_ERRS 8
static char errs[MAX_ERRS][200];
static long errs_count[MAX_ERRS];
static int n_errs;
static long total_errors;

static void record_error(const char *fmt, ...) {
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    total_errors++;
    for (int i = 0; i < n_errs; i++)
        if (strcmp(errs[i], msg) == 0) {
            errs_count[i]++;
            return;
        }
    if (n_errs < MAX_ERRS) {
        strcpy(errs[n_errs], msg);
        errs_count[n_errs++] = 1;
        fprintf(stderr, "loadgen: %s\n", msg);
    }
}

static void json_escape(FILE *f, const char *s) {
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
}

/* ------------------------------------------------------------------------ */
/* byte buffers: data lives in p[off, len)                                   */

typedef struct {
    uint8_t *p;
    size_t off, len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->cap - b->len >= extra) return;
    if (b->off) { /* compact first */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= extra) return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) die("out of memory");
    b->cap = cap;
}

static size_t buf_avail(const buf_t *b) { return b->len - b->off; }

/* ------------------------------------------------------------------------ */
/* SHA-1 and base64 (for the sink's handshake)                               */

typedef struct {
    uint32_t h[5];
    uint64_t n;
    uint8_t blk[64];
    size_t used;
} sha1_t;

static uint32_t rol(uint32_t x, int s) { return (x << s) | (x >> (32 - s)); }

static void sha1_block(sha1_t *c, const uint8_t *p) {
    uint32_t w[80], a = c->h[0], b = c->h[1], d = c->h[3], e = c->h[4], cc = c->h[2];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) f = (b & cc) | (~b & d), k = 0x5A827999;
        else if (i < 40) f = b ^ cc ^ d, k = 0x6ED9EBA1;
        else if (i < 60) f = (b & cc) | (b & d) | (cc & d), k = 0x8F1BBCDC;
        else f = b ^ cc ^ d, k = 0xCA62C1D6;
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d, d = cc, cc = rol(b, 30), b = a, a = t;
    }
    c->h[0] += a, c->h[1] += b, c->h[2] += cc, c->h[3] += d, c->h[4] += e;
}

static void sha1_update(sha1_t *c, const void *data, size_t n) {
    const uint8_t *p = data;
    c->n += n;
    while (n) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->blk + c->used, p, take);
        c->used += take, p += take, n -= take;
        if (c->used == 64) sha1_block(c, c->blk), c->used = 0;
    }
}

static void sha1(const void *data, size_t n, uint8_t out[20]) {
    sha1_t c = {{0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}, 0, {0}, 0};
    sha1_update(&c, data, n);
    uint64_t bits = c.n * 8;
    uint8_t pad = 0x80, zero = 0, len[8];
    sha1_update(&c, &pad, 1);
    while (c.used != 56) sha1_update(&c, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha1_update(&c, len, 8);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(c.h[i] >> (24 - 8 * j));
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tbl[v >> 18], out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63], out[o++] = tbl[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tbl[v >> 18], out[o++] = tbl[(v >> 12) & 63], out[o++] = '=', out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tbl[v >> 18], out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63], out[o++] = '=';
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------------ */
/* connections                                                               */

enum { ST_FREE, ST_CONNECTING, ST_UPGRADING, ST_HELLO, ST_OPEN, ST_CLOSED, ST_BACKOFF };
enum { ROLE_ECHO, ROLE_PUB, ROLE_SUB, ROLE_IDLE, ROLE_SERVER };

typedef struct {
    int fd, idx, state, role, want_out;
    buf_t in, out;
    /* genesis session */
    long long seq_next, hub_ack, rx_seq, ack_sent, epoch;
    uint64_t ack_time;
    int window;
    char sid[64];
    char body[64]; /* the body prefix: {"type":"e","to":"lg-N","data":" */
    size_t body_len;
    /* accounting */
    long long sent_msgs, recv_msgs;
    uint64_t *ts; /* send times of messages in flight (FIFO ring) */
    uint32_t ts_mask, ts_head, ts_count;
    /* storm */
    int attempts, lost, welcomed_after_loss;
    uint64_t last_ping; /* when the server's last ping arrived (genesis) */
    uint64_t retry_at, attempt_started;
    /* permessage-deflate, when negotiated: zlib streams made on first use */
    z_stream *zd, *zi;
    int pmd, c_bits, c_no_ctx, s_no_ctx;
} conn_t;

static conn_t *conns;
static int n_conns; /* slots in use (clients), or capacity (sink) */
static int ep;
static struct sockaddr_in server_addr;
static uint64_t t_start;

/* global counters */
static long long total_recv, total_frames_recv, total_frames_sent, total_msgs_sent;
static long long lost_links, connect_failures;
static long long storm_recovered; /* storm: welcomes after a loss with "recovered":true */
static size_t max_frame_in; /* largest message received (bytes) */
static uint64_t max_ping_gap; /* longest interval between two pings on one link */
static long long late_pings;  /* pings that came more than 1.2 x 5 s after the previous */
/* permessage-deflate: links whose server did not accept the offer, the first
 * negotiated response, compressed frames received, bytes before/after zlib */
static long long deflate_refused, z_frames_in;
static long long z_in_wire, z_in_plain, z_out_wire, z_out_plain;
static char negotiated[160];

/* latency histogram: 1 us buckets below 100 ms, 100 us buckets up to 10 s */
#define HIST_FINE 100000
#define HIST_N 199000
static uint32_t hist[HIST_N];
static long long hist_over, hist_count;
static uint64_t hist_max_ns;
static int measuring, running;

static const char *payload_x; /* --size bytes of 'x' */

#define EV_STDIN 0xFFFFFFF0u
#define EV_LISTEN 0xFFFFFFF1u

static void ep_set(conn_t *c, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)c->idx};
    if (epoll_ctl(ep, op, c->fd, &ev) < 0 && op != EPOLL_CTL_DEL)
        die("epoll_ctl: %s", strerror(errno));
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->want_out = 0;
    c->in.off = c->in.len = 0;
    c->out.off = c->out.len = 0;
    c->state = ST_CLOSED;
    if (c->zd) deflateEnd(c->zd), free(c->zd), c->zd = NULL;
    if (c->zi) inflateEnd(c->zi), free(c->zi), c->zi = NULL;
    c->pmd = 0;
}

static void flush(conn_t *c) {
    if (c->fd < 0) return;
    while (buf_avail(&c->out)) {
        ssize_t w = send(c->fd, c->out.p + c->out.off, buf_avail(&c->out), MSG_NOSIGNAL);
        if (w > 0) {
            c->out.off += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (w < 0 && errno == EINTR) continue;
        return; /* error: the read side will notice */
    }
    if (buf_avail(&c->out) == 0) {
        c->out.off = c->out.len = 0;
        if (c->want_out) c->want_out = 0, ep_set(c, EPOLL_CTL_MOD, EPOLLIN);
    } else if (!c->want_out) {
        c->want_out = 1;
        ep_set(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
    }
}

/* append a masked client frame (or an unmasked server frame) to c->out;
 * rsv1 marks a compressed message (permessage-deflate) */
static void put_frame_rsv(conn_t *c, int opcode, int rsv1, const void *data, size_t n) {
    int masked = c->role != ROLE_SERVER;
    buf_reserve(&c->out, n + 14);
    uint8_t *h = c->out.p + c->out.len;
    size_t hl = 2;
    h[0] = (uint8_t)(0x80 | (rsv1 ? 0x40 : 0) | opcode);
    if (n < 126) {
        h[1] = (uint8_t)n;
    } else if (n < 65536) {
        h[1] = 126, h[2] = (uint8_t)(n >> 8), h[3] = (uint8_t)n, hl = 4;
    } else {
        h[1] = 127, hl = 10;
        for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    }
    uint8_t *dst;
    if (masked) {
        h[1] |= 0x80;
        uint32_t key = (uint32_t)rng_next();
        memcpy(h + hl, &key, 4);
        hl += 4;
        dst = h + hl;
        uint64_t k64 = (uint64_t)key << 32 | key;
        const uint8_t *src = data;
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t v;
            memcpy(&v, src + i, 8);
            v ^= k64;
            memcpy(dst + i, &v, 8);
        }
        const uint8_t *kb = (const uint8_t *)&key;
        for (; i < n; i++) dst[i] = src[i] ^ kb[i & 3];
    } else {
        dst = h + hl;
        memcpy(dst, data, n);
    }
    c->out.len += hl + n;
}

static void put_frame(conn_t *c, int opcode, const void *data, size_t n) {
    put_frame_rsv(c, opcode, 0, data, n);
}

/* ------------------------------------------------------------------------ */
/* permessage-deflate (RFC 7692)                                             */

static buf_t zout, zin; /* one compressed message out, one inflated message in */
static const uint8_t DEFLATE_TAIL[4] = {0x00, 0x00, 0xff, 0xff};

static z_stream *z_new(void) {
    z_stream *z = calloc(1, sizeof *z);
    if (!z) die("out of memory");
    return z;
}

/* compress one message into zout: a sync flush, its 00 00 ff ff tail removed */
static void deflate_message(conn_t *c, const void *data, size_t n) {
    if (!c->zd) { /* zlib's defaults, as browsers use them; the negotiated window */
        c->zd = z_new();
        if (deflateInit2(c->zd, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -c->c_bits, 8,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            die("deflateInit2 failed");
    }
    z_stream *z = c->zd;
    zout.off = zout.len = 0;
    buf_reserve(&zout, deflateBound(z, (uLong)n) + 16);
    z->next_in = (Bytef *)data;
    z->avail_in = (uInt)n;
    for (;;) {
        z->next_out = zout.p + zout.len;
        z->avail_out = (uInt)(zout.cap - zout.len);
        int r = deflate(z, Z_SYNC_FLUSH);
        zout.len = zout.cap - z->avail_out;
        if (r != Z_OK && r != Z_BUF_ERROR) die("deflate failed: %d", r);
        if (z->avail_in == 0 && z->avail_out > 0) break;
        buf_reserve(&zout, 4096);
    }
    if (zout.len >= 4 && !memcmp(zout.p + zout.len - 4, DEFLATE_TAIL, 4)) zout.len -= 4;
    if (c->c_no_ctx) deflateReset(z);
    z_out_plain += (long long)n;
    z_out_wire += (long long)zout.len;
}

/* inflate one compressed message (its tail appended) into zin; -1 on error */
static int inflate_message(conn_t *c, const uint8_t *p, size_t n) {
    if (!c->zi) { /* a 32 KiB window reads whatever window the server chose */
        c->zi = z_new();
        if (inflateInit2(c->zi, -15) != Z_OK) die("inflateInit2 failed");
    }
    z_stream *z = c->zi;
    zin.off = zin.len = 0;
    int ended = 0;
    for (int part = 0; part < 2 && !ended; part++) {
        z->next_in = (Bytef *)(part ? DEFLATE_TAIL : p);
        z->avail_in = (uInt)(part ? 4 : n);
        for (;;) {
            buf_reserve(&zin, 16384);
            z->next_out = zin.p + zin.len;
            z->avail_out = (uInt)(zin.cap - zin.len);
            int r = inflate(z, Z_SYNC_FLUSH);
            zin.len = zin.cap - z->avail_out;
            if (r == Z_STREAM_END) { /* a final block: the server ended the stream */
                inflateReset(z);
                ended = 1;
                break;
            }
            if (r != Z_OK && r != Z_BUF_ERROR) {
                record_error("inflate failed: %s", z->msg ? z->msg : "?");
                inflateReset(z);
                return -1;
            }
            if (z->avail_out > 0 && (z->avail_in == 0 || r == Z_BUF_ERROR)) break;
        }
    }
    if (c->s_no_ctx) inflateReset(z);
    z_frames_in++;
    z_in_wire += (long long)n;
    z_in_plain += (long long)zin.len;
    return 0;
}

/* a text data message: compressed when the link negotiated permessage-deflate */
static void put_message(conn_t *c, const void *data, size_t n) {
    if (c->pmd) {
        deflate_message(c, data, n);
        put_frame_rsv(c, 1, 1, zout.p, zout.len);
    } else {
        put_frame(c, 1, data, n);
    }
}

/* scratch space for building frame payloads */
static buf_t scratch;

static void scratch_put(const void *p, size_t n) {
    buf_reserve(&scratch, n);
    memcpy(scratch.p + scratch.len, p, n);
    scratch.len += n;
}

static void scratch_printf(const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    scratch_put(tmp, (size_t)n);
}

static void send_text(conn_t *c, const char *s) { put_message(c, s, strlen(s)); }

static void send_ack(conn_t *c) {
    char tmp[64];
    snprintf(tmp, sizeof tmp, "{\"t\":\"ack\",\"seq\":%lld}", c->rx_seq);
    send_text(c, tmp);
    c->ack_sent = c->rx_seq;
    c->ack_time = now_ns();
}

static void ts_push(conn_t *c, uint64_t t, int n) {
    if (!c->ts) return;
    for (int i = 0; i < n && c->ts_count <= c->ts_mask; i++, c->ts_count++)
        c->ts[(c->ts_head + c->ts_count) & c->ts_mask] = t;
}

static void ts_pop(conn_t *c, long long n, uint64_t now) {
    if (!c->ts) return;
    for (; n > 0 && c->ts_count; n--, c->ts_count--, c->ts_head = (c->ts_head + 1) & c->ts_mask) {
        if (!measuring) continue;
        uint64_t d = now - c->ts[c->ts_head];
        uint64_t us = d / 1000;
        uint64_t b = us < HIST_FINE ? us : HIST_FINE + (us - HIST_FINE) / 100;
        if (b < HIST_N) hist[b]++;
        else hist_over++;
        if (d > hist_max_ns) hist_max_ns = d;
        hist_count++;
    }
}

/* send k messages in one frame (raw dialect: k is 1) */
static void send_messages(conn_t *c, int k) {
    uint64_t t = now_ns();
    if (opt.dialect == DIALECT_RAW) {
        put_message(c, payload_x, (size_t)opt.size);
    } else if (opt.dialect == DIALECT_SOCKETIO) {
        scratch.off = scratch.len = 0;
        scratch_printf("42[\"%s\",\"", c->role == ROLE_PUB ? "bcast" : "echo");
        scratch_put(payload_x, (size_t)opt.size);
        scratch_put("\"]", 2);
        put_message(c, scratch.p, scratch.len);
    } else {
        scratch.off = scratch.len = 0;
        scratch_printf("{\"t\":\"%s\",\"seq\":%lld", k == 1 ? "msg" : "batch", c->seq_next);
        if (c->rx_seq > c->ack_sent) { /* acknowledgements ride on outgoing frames */
            scratch_printf(",\"ack\":%lld", c->rx_seq);
            c->ack_sent = c->rx_seq;
            c->ack_time = t;
        }
        scratch_put(k == 1 ? ",\"m\":" : ",\"m\":[", k == 1 ? 5 : 6);
        for (int i = 0; i < k; i++) {
            if (i) scratch_put(",", 1);
            scratch_put(c->body, c->body_len);
            scratch_put(payload_x, (size_t)opt.size);
            scratch_put("\"}", 2);
        }
        scratch_put(k == 1 ? "}" : "]}", k == 1 ? 1 : 2);
        put_message(c, scratch.p, scratch.len);
        c->seq_next += k;
    }
    ts_push(c, t, k);
    c->sent_msgs += k;
    total_msgs_sent += k;
    total_frames_sent++;
}

static int window_allows(conn_t *c, int k) {
    return opt.dialect != DIALECT_GENESIS || c->seq_next - 1 + k - c->hub_ack <= c->window;
}

static int echo_inflight(void) {
    int w = opt.inflight;
    if (opt.k > 1 && 4 * opt.k > w) w = 4 * opt.k; /* at least 4 frames in flight */
    return w;
}

static void pump_echo(conn_t *c) {
    int w = echo_inflight();
    while (running && c->state == ST_OPEN && c->sent_msgs - c->recv_msgs + opt.k <= w &&
           window_allows(c, opt.k))
        send_messages(c, opt.k);
}

static conn_t *publisher;

static void pump_pub(void) {
    conn_t *c = publisher;
    if (!c || !running || c->state != ST_OPEN) return;
    long long subs = opt.subs;
    while ((c->sent_msgs + opt.k) * subs - total_recv <= (long long)opt.inflight * subs &&
           window_allows(c, opt.k))
        send_messages(c, opt.k);
    flush(c);
}

/* ------------------------------------------------------------------------ */
/* opening connections                                                       */

static int n_opening, n_open, n_failed, target_conns;
static uint64_t t_last_open;
static void on_open(conn_t *c);
static void schedule_retry(conn_t *c, const char *why);

static void conn_start(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        record_error("socket: %s", strerror(errno));
        c->state = ST_CLOSED;
        n_failed++;
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->attempt_started = now_ns();
    int r = connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr);
    if (r < 0 && errno != EINPROGRESS) {
        int e = errno;
        conn_close(c);
        if (opt.mode == MODE_STORM && c->lost) {
            schedule_retry(c, strerror(e));
        } else {
            record_error("connect: %s", strerror(e));
            n_failed++;
        }
        return;
    }
    c->state = ST_CONNECTING;
    c->want_out = 1;
    n_opening++;
    ep_set(c, EPOLL_CTL_ADD, EPOLLIN | EPOLLOUT);
}

static void start_more(void) {
    while (n_opening < opt.connect_concurrency && n_conns < target_conns) {
        conn_t *c = &conns[n_conns];
        c->idx = n_conns++;
        conn_start(c);
    }
}

static void send_upgrade(conn_t *c) {
    char req[640];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s%s\r\n",
                     opt.path, opt.host, opt.port,
                     opt.dialect == DIALECT_GENESIS ? "Sec-WebSocket-Protocol: genesis.v1.json\r\n"
                                                    : "",
                     opt.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                   "client_max_window_bits\r\n"
                                 : "");
    buf_reserve(&c->out, (size_t)n);
    memcpy(c->out.p + c->out.len, req, (size_t)n);
    c->out.len += (size_t)n;
    c->state = ST_UPGRADING;
}

static void send_hello(conn_t *c) {
    char tmp[512], topics[96] = "[]";
    if (c->role == ROLE_SUB) snprintf(topics, sizeof topics, "[\"%s\"]", opt.topic);
    if (c->sid[0])
        snprintf(tmp, sizeof tmp,
                 "{\"t\":\"hello\",\"v\":1,\"id\":\"%s-%d\",\"sid\":\"%s\",\"epoch\":%lld,"
                 "\"ack\":%lld,\"topics\":%s}",
                 opt.prefix, c->idx, c->sid, c->epoch, c->rx_seq, topics);
    else
        snprintf(tmp, sizeof tmp,
                 "{\"t\":\"hello\",\"v\":1,\"id\":\"%s-%d\",\"sid\":null,\"epoch\":0,\"ack\":0,"
                 "\"topics\":%s}",
                 opt.prefix, c->idx, topics);
    send_text(c, tmp);
    c->state = ST_HELLO;
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        n_opening--;
        conn_close(c);
        if (opt.mode == MODE_STORM && c->lost) {
            schedule_retry(c, strerror(err));
            return;
        }
        record_error("connect: %s", strerror(err));
        n_failed++;
        return;
    }
    send_upgrade(c); /* still "opening" until the handshake completes */
    flush(c);
}

/* the handshake finished (raw: 101 received; genesis: welcome received) */
static void on_open(conn_t *c) {
    c->state = ST_OPEN;
    n_opening--;
    n_open++;
    t_last_open = now_ns();
    c->ack_time = t_last_open;
    if (c->role == ROLE_ECHO && !c->ts) {
        uint32_t cap = 1;
        while (cap < (uint32_t)(echo_inflight() + opt.k + 1)) cap <<= 1;
        c->ts = calloc(cap, sizeof *c->ts);
        c->ts_mask = cap - 1;
    }
    if (opt.dialect == DIALECT_GENESIS) {
        int n;
        if (c->role == ROLE_PUB)
            n = snprintf(c->body, sizeof c->body, "{\"type\":\"e\",\"topic\":\"%s\",\"data\":\"",
                         opt.topic);
        else
            n = snprintf(c->body, sizeof c->body, "{\"type\":\"e\",\"to\":\"%s-%d\",\"data\":\"",
                         opt.prefix, c->idx);
        c->body_len = (size_t)n;
    }
    if (opt.mode == MODE_STORM && c->lost) c->welcomed_after_loss = 1;
    if (c->role == ROLE_ECHO) pump_echo(c);
}

/* ------------------------------------------------------------------------ */
/* frames from the server                                                    */

static const char *find(const char *hay, size_t n, const char *needle) {
    return memmem(hay, n, needle, strlen(needle));
}

static long long num_after(const char *p, size_t n, const char *key) {
    const char *k = find(p, n, key);
    if (!k) return -1;
    k += strlen(key);
    long long v = 0;
    int any = 0;
    while (k < p + n && *k >= '0' && *k <= '9') v = v * 10 + (*k++ - '0'), any = 1;
    return any ? v : -1;
}

static void delivered(conn_t *c, long long count) {
    uint64_t now = (c->role == ROLE_ECHO && c->ts) ? now_ns() : 0;
    c->recv_msgs += count;
    total_recv += count;
    if (now) ts_pop(c, count, now);
}

static void genesis_frame(conn_t *c, const char *p, size_t n) {
    int shown = n < 60 ? (int)n : 60;
    if (n < 8 || memcmp(p, "{\"t\":\"", 6) != 0) {
        record_error("unexpected frame: %.*s", shown, p);
        return;
    }
    const char *t = p + 6;
    size_t tn = n - 6;
#define IS(name) (tn > sizeof(name) - 1 && !memcmp(t, name "\"", sizeof(name)))
    if (IS("msg") || IS("batch")) {
        const char *m = find(p, n < 80 ? n : 80, "\"m\":");
        if (!m) {
            record_error("delivery without m: %.*s", shown, p);
            return;
        }
        size_t head = (size_t)(m - p);
        long long seq = num_after(p, head, "\"seq\":");
        long long ack = num_after(p, head, "\"ack\":");
        long long count = 1;
        if (t[0] == 'b') {
            count = 0;
            const char *q = m, *end = p + n;
            while ((q = memmem(q, (size_t)(end - q), "{\"type\":\"", 9)) != NULL) count++, q += 9;
        }
        if (ack > c->hub_ack) c->hub_ack = ack;
        if (seq > c->rx_seq + 1)
            record_error("hub sequence gap: expected %lld, got %lld", c->rx_seq + 1, seq);
        long long last = seq + count - 1;
        if (last <= c->rx_seq) return; /* all duplicates */
        long long fresh = seq > c->rx_seq ? count : last - c->rx_seq;
        c->rx_seq = last;
        delivered(c, fresh);
        if (c->rx_seq - c->ack_sent >= c->window / 2) send_ack(c);
    } else if (IS("ack")) {
        long long ack = num_after(p, n, "\"seq\":");
        if (ack > c->hub_ack) c->hub_ack = ack;
    } else if (IS("ping")) {
        long long id = num_after(p, n, "\"id\":");
        uint64_t now = now_ns();
        if (c->last_ping) {
            uint64_t gap = now - c->last_ping;
            if (gap > max_ping_gap) max_ping_gap = gap;
            if (gap > 6000000000ull) late_pings++;
        }
        c->last_ping = now;
        char tmp[64];
        snprintf(tmp, sizeof tmp, "{\"t\":\"pong\",\"id\":%lld}", id < 0 ? 0 : id);
        send_text(c, tmp);
    } else if (IS("pong")) {
        /* nothing */
    } else if (IS("welcome")) {
        long long w = num_after(p, n, "\"window\":");
        c->window = w > 0 ? (int)w : 1000;
        long long epoch = num_after(p, n, "\"epoch\":");
        const char *s = find(p, n, "\"sid\":\"");
        if (s) {
            s += 7;
            size_t i = 0;
            while (s + i < p + n && s[i] != '"' && i < sizeof c->sid - 1) c->sid[i] = s[i], i++;
            c->sid[i] = 0;
        }
        if (find(p, n, "\"recovered\":false")) { /* new session or epoch: restart at 1 */
            c->seq_next = 1, c->hub_ack = 0, c->rx_seq = 0, c->ack_sent = 0;
        }
        c->epoch = epoch;
        if (c->lost && find(p, n, "\"recovered\":true")) storm_recovered++;
        if (c->state == ST_HELLO) on_open(c);
    } else if (IS("error")) {
        record_error("hub error frame: %.*s", (int)(n < 160 ? n : 160), p);
    } else {
        record_error("unknown frame: %.*s", shown, p);
    }
#undef IS
}

/* Socket.IO v5 over Engine.IO v4 (one Engine.IO packet per WebSocket frame) */
static void socketio_frame(conn_t *c, const char *p, size_t n) {
    int shown = n < 60 ? (int)n : 60;
    if (n >= 2 && p[0] == '4' && p[1] == '2') { /* EVENT */
        if (c->state == ST_OPEN) delivered(c, 1);
    } else if (n == 1 && p[0] == '2') { /* Engine.IO ping */
        send_text(c, "3");
    } else if (n >= 2 && p[0] == '0' && p[1] == '{') { /* Engine.IO open: join namespace / */
        if (c->state == ST_HELLO) send_text(c, "40");
        else record_error("unexpected Engine.IO open packet");
    } else if (n >= 2 && p[0] == '4' && p[1] == '0') { /* CONNECT reply */
        if (c->state == ST_HELLO) on_open(c);
    } else if (n >= 2 && p[0] == '4' && p[1] == '4') {
        record_error("socket.io connect error: %.*s", shown, p);
    } else if (n >= 2 && p[0] == '4' && p[1] == '1') {
        record_error("socket.io server disconnected the namespace");
    } else if (n >= 1 && p[0] == '1') {
        record_error("engine.io close packet");
    } else if (!(n == 1 && p[0] == '6')) { /* 6: noop */
        record_error("unexpected socket.io frame: %.*s", shown, p);
    }
}

static void on_lost(conn_t *c, const char *why);

/* one complete frame; returns 0 when the connection was closed */
static int handle_frame(conn_t *c, int opcode, int fin, uint8_t *p, size_t n) {
    total_frames_recv++;
    if (n > max_frame_in) max_frame_in = n;
    if (opcode == 9) { /* ping */
        put_frame(c, 10, p, n);
        return 1;
    }
    if (opcode == 10) return 1;
    if (opcode == 8) {
        int code = n >= 2 ? (p[0] << 8 | p[1]) : 1005;
        char why[160];
        snprintf(why, sizeof why, "server closed the link: %d %.*s", code,
                 (int)(n > 2 ? (n - 2 < 100 ? n - 2 : 100) : 0), (const char *)p + 2);
        on_lost(c, why);
        return 0;
    }
    if (!fin || opcode == 0) {
        record_error("fragmented message (unsupported)");
        return 1;
    }
    if (c->role == ROLE_SERVER) { /* sink: echo */
        put_frame(c, opcode, p, n);
        return 1;
    }
    if (opt.dialect == DIALECT_RAW) {
        if (c->state == ST_OPEN) delivered(c, 1);
        else if (c->state == ST_HELLO) on_open(c); /* the idle link's first echo */
        return 1;
    }
    if (opt.dialect == DIALECT_SOCKETIO) {
        socketio_frame(c, (const char *)p, n);
        return c->fd >= 0;
    }
    genesis_frame(c, (const char *)p, n);
    return c->fd >= 0;
}

/* the value of a response header (a NUL-terminated copy in out), or NULL */
static const char *header_value(const char *p, const char *end, const char *name, char *out,
                                size_t cap) {
    size_t nl = strlen(name);
    const char *line = strstr(p, "\r\n"); /* past the status line */
    while (line && line < end) {
        line += 2;
        if ((size_t)(end - line) > nl && !strncasecmp(line, name, nl) && line[nl] == ':') {
            const char *v = line + nl + 1, *eol = strstr(v, "\r\n");
            while (*v == ' ' || *v == '\t') v++;
            size_t n = (size_t)(eol - v) < cap - 1 ? (size_t)(eol - v) : cap - 1;
            memcpy(out, v, n);
            out[n] = 0;
            return out;
        }
        line = strstr(line, "\r\n");
    }
    return NULL;
}

/* what the server answered to our permessage-deflate offer */
static void accept_deflate(conn_t *c, const char *p, const char *end) {
    char value[160];
    if (!header_value(p, end, "Sec-WebSocket-Extensions", value, sizeof value) ||
        strncasecmp(value, "permessage-deflate", 18) != 0) {
        deflate_refused++;
        record_error("the server did not accept permessage-deflate");
        return;
    }
    if (!negotiated[0]) snprintf(negotiated, sizeof negotiated, "%s", value);
    c->pmd = 1;
    c->c_bits = 15;
    c->c_no_ctx = c->s_no_ctx = 0;
    char *save = NULL;
    for (char *tok = strtok_r(value + 18, ";,", &save); tok; tok = strtok_r(NULL, ";,", &save)) {
        while (*tok == ' ' || *tok == '\t') tok++;
        if (!strncasecmp(tok, "client_max_window_bits", 22)) {
            const char *eq = strchr(tok, '=');
            int bits = eq ? atoi(eq + 1 + (eq[1] == '"')) : 15;
            c->c_bits = bits < 9 ? 9 : bits > 15 ? 15 : bits; /* zlib's raw deflate: 9..15 */
        } else if (!strncasecmp(tok, "client_no_context_takeover", 26)) {
            c->c_no_ctx = 1;
        } else if (!strncasecmp(tok, "server_no_context_takeover", 26)) {
            c->s_no_ctx = 1;
        }
    }
}

static int parse_upgrade(conn_t *c) {
    char *p = (char *)c->in.p + c->in.off;
    size_t n = buf_avail(&c->in);
    char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t hl = (size_t)(end - p) + 4;
    if (c->role == ROLE_SERVER) {
        char *key = NULL;
        for (char *line = p; line < end; line = strstr(line, "\r\n") + 2)
            if (!strncasecmp(line, "Sec-WebSocket-Key:", 18)) {
                key = line + 18;
                break;
            }
        if (!key) {
            conn_close(c);
            return -1;
        }
        while (*key == ' ') key++;
        char buf[128];
        size_t kl = (size_t)(strstr(key, "\r\n") - key);
        if (kl > 60) kl = 60;
        memcpy(buf, key, kl);
        strcpy(buf + kl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        uint8_t digest[20];
        char accept[32], resp[256];
        sha1(buf, strlen(buf), digest);
        base64(digest, 20, accept);
        int rn = snprintf(resp, sizeof resp,
                          "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                          accept);
        buf_reserve(&c->out, (size_t)rn);
        memcpy(c->out.p + c->out.len, resp, (size_t)rn);
        c->out.len += (size_t)rn;
        c->in.off += hl;
        c->state = ST_OPEN;
        return 1;
    }
    if (n < 12 || memcmp(p, "HTTP/1.1 101", 12) != 0) {
        char *eol = memmem(p, n, "\r\n", 2);
        char why[160];
        snprintf(why, sizeof why, "upgrade refused: %.*s", (int)(eol ? eol - p : 40), p);
        on_lost(c, why);
        return -1;
    }
    if (!memmem(p, hl, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 28)) {
        on_lost(c, "bad Sec-WebSocket-Accept");
        return -1;
    }
    if (opt.deflate) accept_deflate(c, p, end);
    c->in.off += hl;
    if (opt.dialect == DIALECT_GENESIS) {
        send_hello(c);
    } else if (opt.dialect == DIALECT_SOCKETIO) {
        c->state = ST_HELLO; /* wait for the open packet, then join the namespace */
    } else if (c->role == ROLE_IDLE && c->pmd) {
        /* one echo first, so that both sides have their zlib streams (as a
         * genesis link has after hello/welcome) before the link idles */
        put_message(c, payload_x, (size_t)opt.size);
        c->state = ST_HELLO;
    } else {
        on_open(c);
    }
    return 1;
}

static void on_readable(conn_t *c) {
    size_t budget = 4u << 20;
    for (;;) {
        buf_reserve(&c->in, 256 * 1024);
        ssize_t r = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
        if (r > 0) {
            c->in.len += (size_t)r;
            if ((size_t)r >= budget) break;
            budget -= (size_t)r;
            continue;
        }
        if (r == 0) {
            on_lost(c, "connection closed by the server (EOF)");
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EINTR) continue;
        char why[96];
        snprintf(why, sizeof why, "recv: %s", strerror(errno));
        on_lost(c, why);
        return;
    }
    buf_reserve(&c->in, 1);
    c->in.p[c->in.len] = 0; /* the header parsers use string functions */
    if (c->state == ST_UPGRADING && parse_upgrade(c) <= 0) return;
    while (c->fd >= 0) {
        uint8_t *p = c->in.p + c->in.off;
        size_t n = buf_avail(&c->in);
        if (n < 2) break;
        int fin = p[0] >> 7, rsv1 = (p[0] >> 6) & 1, opcode = p[0] & 15, masked = p[1] >> 7;
        uint64_t len = p[1] & 127;
        size_t hl = 2;
        if (len == 126) {
            if (n < 4) break;
            len = (uint64_t)p[2] << 8 | p[3], hl = 4;
        } else if (len == 127) {
            if (n < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i];
            hl = 10;
        }
        uint8_t mask[4] = {0};
        if (masked) {
            if (n < hl + 4) break;
            memcpy(mask, p + hl, 4);
            hl += 4;
        }
        if (n < hl + len) break;
        uint8_t *payload = p + hl;
        if (masked)
            for (uint64_t i = 0; i < len; i++) payload[i] ^= mask[i & 3];
        c->in.off += hl + len;
        if (rsv1) { /* a compressed message (permessage-deflate) */
            if (!c->pmd || opcode >= 8) {
                on_lost(c, "RSV1 set on a frame without permessage-deflate");
                return;
            }
            if (!fin) {
                record_error("fragmented compressed message (unsupported)");
                continue;
            }
            if (inflate_message(c, payload, (size_t)len) < 0) continue;
            payload = zin.p;
            len = zin.len;
        }
        if (!handle_frame(c, opcode, fin, payload, (size_t)len)) return;
    }
    if (c->role == ROLE_ECHO) pump_echo(c);
    flush(c);
}

/* ------------------------------------------------------------------------ */
/* storm: reconnect with exponential backoff and full jitter                 */

static long long storm_attempts, storm_lost_now;
static uint64_t storm_first_loss, storm_first_rewelcome, storm_all_rewelcomed;
static int storm_armed;

static void schedule_retry(conn_t *c, const char *why) {
    (void)why;
    connect_failures++;
    double ceiling = opt.backoff_initial;
    for (int i = 0; i < c->attempts && ceiling < opt.backoff_cap; i++) ceiling *= 2;
    if (ceiling > opt.backoff_cap) ceiling = opt.backoff_cap;
    c->attempts++;
    c->state = ST_BACKOFF;
    c->retry_at = now_ns() + (uint64_t)(rng_unit() * ceiling * 1e9);
}

static void on_lost(conn_t *c, const char *why) {
    int was_open = c->state == ST_OPEN;
    if (c->state == ST_CONNECTING || c->state == ST_UPGRADING || c->state == ST_HELLO) n_opening--;
    if (was_open) n_open--;
    conn_close(c);
    if (opt.mode == MODE_STORM && storm_armed) {
        if (!c->lost) {
            c->lost = 1;
            c->attempts = 0;
            storm_lost_now++;
            lost_links++;
            if (!storm_first_loss) storm_first_loss = now_ns();
        }
        schedule_retry(c, why);
        return;
    }
    if (c->role == ROLE_SERVER) return;
    record_error("%s", why);
    if (was_open) lost_links++;
    else n_failed++;
}

static void storm_tick(uint64_t now) {
    for (int i = 0; i < n_conns; i++) {
        conn_t *c = &conns[i];
        if (c->state == ST_BACKOFF && now >= c->retry_at) {
            storm_attempts++;
            conn_start(c);
        } else if ((c->state == ST_CONNECTING || c->state == ST_UPGRADING ||
                    c->state == ST_HELLO) &&
                   c->lost && now - c->attempt_started > (uint64_t)(opt.attempt_timeout * 1e9)) {
            n_opening--;
            conn_close(c);
            schedule_retry(c, "attempt timed out");
        }
    }
}

/* ------------------------------------------------------------------------ */
/* event loop                                                                */

static int stdin_eof;
static char stdin_line[256];
static size_t stdin_len;
static int (*on_command)(const char *line);

static void read_stdin(void) {
    for (;;) {
        ssize_t r = read(0, stdin_line + stdin_len, sizeof stdin_line - 1 - stdin_len);
        if (r <= 0) {
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
            stdin_eof = 1;
            epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
            return;
        }
        stdin_len += (size_t)r;
        stdin_line[stdin_len] = 0;
        char *nl;
        while ((nl = strchr(stdin_line, '\n')) != NULL) {
            *nl = 0;
            if (on_command) on_command(stdin_line);
            size_t used = (size_t)(nl - stdin_line) + 1;
            memmove(stdin_line, nl + 1, stdin_len - used + 1);
            stdin_len -= used;
        }
    }
}

static int listen_fd = -1;

static void accept_all(void) {
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        int slot = -1;
        for (int i = 0; i < n_conns; i++)
            if (conns[i].fd < 0) {
                slot = i;
                break;
            }
        if (slot < 0) {
            close(fd);
            continue;
        }
        conn_t *c = &conns[slot];
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->fd = fd;
        c->idx = slot;
        c->role = ROLE_SERVER;
        c->state = ST_UPGRADING;
        ep_set(c, EPOLL_CTL_ADD, EPOLLIN);
    }
}

static void poll_once(int timeout_ms) {
    static struct epoll_event evs[1024];
    int n = epoll_wait(ep, evs, 1024, timeout_ms);
    for (int i = 0; i < n; i++) {
        uint32_t id = evs[i].data.u32, e = evs[i].events;
        if (id == EV_STDIN) {
            read_stdin();
            continue;
        }
        if (id == EV_LISTEN) {
            accept_all();
            continue;
        }
        conn_t *c = &conns[id];
        if (c->fd < 0) continue;
        if (c->state == ST_CONNECTING) {
            on_connected(c);
            continue;
        }
        if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
        if (c->fd >= 0 && (e & EPOLLOUT)) flush(c);
    }
    if (publisher) pump_pub();
}

/* acknowledge what has waited long enough, so that the hub can free it */
static uint64_t last_sweep;
static void ack_sweep(uint64_t now) {
    if (opt.dialect != DIALECT_GENESIS || now - last_sweep < 20000000ull) return;
    last_sweep = now;
    for (int i = 0; i < n_conns; i++) {
        conn_t *c = &conns[i];
        if (c->state == ST_OPEN && c->rx_seq > c->ack_sent && now - c->ack_time > 100000000ull) {
            send_ack(c);
            flush(c);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* results                                                                   */

static double hist_pct(double q) {
    if (!hist_count) return 0;
    long long want = (long long)(q * (double)hist_count + 0.5), seen = 0;
    if (want < 1) want = 1;
    for (int i = 0; i < HIST_N; i++) {
        seen += hist[i];
        if (seen >= want) return i < HIST_FINE ? i + 0.5 : HIST_FINE + (i - HIST_FINE) * 100.0 + 50;
    }
    return (double)hist_max_ns / 1000.0;
}

static void print_errors(void) {
    printf("\"errors\":%ld,\"error_messages\":[", total_errors);
    for (int i = 0; i < n_errs; i++) {
        printf("%s\"", i ? "," : "");
        json_escape(stdout, errs[i]);
        printf(" (x%ld)\"", errs_count[i]);
    }
    printf("]");
}

/* permessage-deflate: what was negotiated, how much the messages shrank */
static void print_deflate(long long frames_in) {
    if (!opt.deflate) return;
    printf("\"deflate_refused\":%lld,\"negotiated\":\"", deflate_refused);
    json_escape(stdout, negotiated);
    printf("\",\"z_frames_in\":%lld,\"z_in_wire\":%lld,\"z_in_plain\":%lld,"
           "\"z_out_wire\":%lld,\"z_out_plain\":%lld,",
           frames_in, z_in_wire, z_in_plain, z_out_wire, z_out_plain);
}

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

/* ------------------------------------------------------------------------ */
/* modes                                                                     */

static void connect_all(int n, double limit_s) {
    target_conns = n;
    uint64_t deadline = now_ns() + (uint64_t)(limit_s * 1e9);
    while ((n_conns < target_conns || n_opening > 0) && now_ns() < deadline) {
        start_more();
        poll_once(5);
        if (opt.mode == MODE_STORM) storm_tick(now_ns());
    }
}

/* end every link cleanly (genesis: bye; then a close frame and a half-close)
 * and read until the server closes, so that no RST discards the goodbye */
static void leave_politely(void) {
    running = 0;
    publisher = NULL;
    int open = 0;
    for (int i = 0; i < n_conns; i++) {
        conn_t *c = &conns[i];
        if (c->fd < 0) continue;
        if (c->state == ST_OPEN) {
            if (opt.dialect == DIALECT_GENESIS) send_text(c, "{\"t\":\"bye\"}");
            if (opt.dialect == DIALECT_SOCKETIO) send_text(c, "41"); /* leave the namespace */
            put_frame(c, 8, "\x03\xe8", 2);
            flush(c);
        }
        c->state = ST_CLOSED;
        open++;
    }
    uint64_t deadline = now_ns() + 300000000ull;
    while (now_ns() < deadline) {
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, 10);
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[evs[i].data.u32];
            if (evs[i].data.u32 >= (uint32_t)n_conns || c->fd < 0) continue;
            if (evs[i].events & EPOLLOUT) flush(c);
            char sink[65536];
            ssize_t r = recv(c->fd, sink, sizeof sink, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                conn_close(c);
                if (--open == 0) return;
            }
        }
    }
}

static int run_measured(void) {
    /* echo and fanout: connect, run, warm up, measure */
    int clients = opt.mode == MODE_FANOUT ? opt.subs : opt.conns;
    for (int i = 0; i < clients; i++)
        conns[i].role = opt.mode == MODE_FANOUT ? ROLE_SUB : ROLE_ECHO;
    uint64_t t0 = now_ns();
    connect_all(clients, opt.timeout / 2);
    if (n_open < clients) {
        printf("{\"ok\":false,\"phase\":\"connect\",\"open\":%d,\"wanted\":%d,", n_open, clients);
        print_errors();
        printf("}\n");
        return 1;
    }
    if (opt.mode == MODE_FANOUT && !opt.no_pub) {
        conn_t *p = &conns[n_conns];
        p->role = ROLE_PUB;
        connect_all(clients + 1, 10);
        if (p->state != ST_OPEN) {
            printf("{\"ok\":false,\"phase\":\"publisher\",");
            print_errors();
            printf("}\n");
            return 1;
        }
        publisher = p;
    }
    double connect_s = ns_to_s(now_ns() - t0);
    if (opt.no_pub) say("ready %d\n", n_open);
    running = 1;
    for (int i = 0; i < n_conns; i++)
        if (conns[i].role == ROLE_ECHO) {
            pump_echo(&conns[i]);
            flush(&conns[i]);
        }
    /* wait for the first delivery (the external publisher may start late) */
    uint64_t hard = now_ns() + (uint64_t)(opt.timeout * 1e9);
    while (total_recv == 0 && now_ns() < hard) poll_once(5);
    uint64_t t_warm = now_ns() + (uint64_t)(opt.warmup * 1e9);
    while (now_ns() < t_warm) poll_once(1), ack_sweep(now_ns());
    long long recv0 = total_recv, frames0 = total_frames_recv, sent0 = total_frames_sent;
    long long lost0 = lost_links, zframes0 = z_frames_in;
    double cpu0 = cpu_seconds();
    uint64_t m0 = now_ns(), m_end = m0 + (uint64_t)(opt.duration * 1e9);
    say("mark start\n"); /* lets the harness sample the server's CPU time */
    measuring = 1;
    while (now_ns() < m_end) poll_once(1), ack_sweep(now_ns());
    measuring = 0;
    uint64_t m1 = now_ns();
    say("mark end\n");
    double secs = ns_to_s(m1 - m0), cpu = cpu_seconds() - cpu0;
    long long msgs = total_recv - recv0;
    /* ok: the server answered at all (the window itself may be empty: a stall) */
    printf("{\"ok\":%s,\"messages\":%lld,\"seconds\":%.4f,\"rate\":%.1f,",
           total_recv > 0 ? "true" : "false", msgs, secs, msgs / secs);
    printf("\"frames_in\":%lld,\"frames_out\":%lld,\"cpu\":%.3f,\"connect_s\":%.3f,",
           total_frames_recv - frames0, total_frames_sent - sent0, cpu / secs, connect_s);
    printf("\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"samples\":%lld,",
           hist_pct(0.5), hist_pct(0.9), hist_pct(0.99), (double)hist_max_ns / 1000.0, hist_count);
    printf("\"links_lost\":%lld,\"max_frame_in\":%zu,", lost_links - lost0, max_frame_in);
    print_deflate(z_frames_in - zframes0);
    print_errors();
    printf("}\n");
    fflush(stdout);
    leave_politely();
    return 0;
}

static int idle_command(const char *line) {
    int n;
    if (sscanf(line, "connect %d", &n) == 1) {
        if (n > opt.conns) n = opt.conns;
        uint64_t t0 = now_ns();
        int failed0 = n_failed;
        for (int i = n_conns; i < n; i++) conns[i].role = ROLE_IDLE;
        connect_all(n, opt.timeout);
        say("connected %d %d %.3f %lld %.3f %lld %lld\n", n_open, n_failed - failed0,
            ns_to_s(now_ns() - t0), lost_links, ns_to_s(max_ping_gap), late_pings,
            deflate_refused);
    } else if (!strncmp(line, "quit", 4)) {
        exit(0);
    }
    return 0;
}

static int storm_command(const char *line) {
    if (!strncmp(line, "quit", 4)) exit(0);
    return 0;
}

static void add_stdin(void) {
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = EV_STDIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
}

static int run_idle(void) {
    on_command = idle_command;
    add_stdin();
    say("idle ready\n");
    while (!stdin_eof) poll_once(100);
    return 0;
}

static int run_storm(void) {
    on_command = storm_command;
    add_stdin();
    for (int i = 0; i < opt.conns; i++) conns[i].role = ROLE_IDLE;
    uint64_t t0 = now_ns();
    connect_all(opt.conns, opt.timeout);
    if (n_open < opt.conns) {
        printf("{\"ok\":false,\"phase\":\"connect\",\"open\":%d,\"wanted\":%d,", n_open, opt.conns);
        print_errors();
        printf("}\n");
        return 1;
    }
    say("ready %d %.3f\n", n_open, ns_to_s(now_ns() - t0));
    storm_armed = 1;
    uint64_t hard = 0;
    int rewelcomed = 0;
    while (!stdin_eof) {
        uint64_t now = now_ns();
        poll_once(2);
        storm_tick(now);
        ack_sweep(now);
        if (storm_first_loss && !hard) hard = storm_first_loss + (uint64_t)(opt.timeout * 1e9);
        if (!storm_first_loss) continue;
        rewelcomed = 0;
        for (int i = 0; i < n_conns; i++) {
            rewelcomed += conns[i].welcomed_after_loss;
            if (conns[i].welcomed_after_loss && !storm_first_rewelcome)
                storm_first_rewelcome = now_ns();
        }
        if (rewelcomed == opt.conns) {
            storm_all_rewelcomed = now_ns();
            break;
        }
        if (hard && now > hard) break;
    }
    printf("{\"ok\":%s,\"conns\":%d,\"lost\":%lld,\"rewelcomed\":%d,", 
           storm_all_rewelcomed ? "true" : "false", opt.conns, storm_lost_now, rewelcomed);
    printf("\"t_first_loss\":%.6f,\"t_first_welcome\":%.6f,\"t_all_welcome\":%.6f,",
           ns_to_s(storm_first_loss), ns_to_s(storm_first_rewelcome), ns_to_s(storm_all_rewelcomed));
    printf("\"attempts\":%lld,\"failed_attempts\":%lld,\"recovered\":%lld,", storm_attempts,
           connect_failures, storm_recovered);
    print_errors();
    printf("}\n");
    fflush(stdout);
    while (!stdin_eof) poll_once(50); /* stay connected until told to quit */
    return 0;
}

static int run_sink(void) {
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listen_fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0)
        die("bind: %s", strerror(errno));
    if (listen(listen_fd, 4096) < 0) die("listen: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = EV_LISTEN};
    epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd, &ev);
    for (int i = 0; i < n_conns; i++) conns[i].fd = -1;
    say("sink listening on %d\n", opt.port);
    for (;;) poll_once(1000);
    return 0;
}

/* ------------------------------------------------------------------------ */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen echo|fanout|idle|storm|sink [--port P] [--host H] [--path /ws]\n"
            "  [--dialect raw|genesis|socketio] [--deflate] [--conns N] [--subs S]\n"
            "  [--inflight W] [--size B] [--k K] [--duration S] [--warmup S] [--timeout S]\n"
            "  [--concurrency N]"
            " [--no-pub] [--topic T] [--prefix P] [--backoff-initial S] [--backoff-cap S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *m = argv[1];
    opt.mode = !strcmp(m, "echo")     ? MODE_ECHO
               : !strcmp(m, "fanout") ? MODE_FANOUT
               : !strcmp(m, "idle")   ? MODE_IDLE
               : !strcmp(m, "storm")  ? MODE_STORM
               : !strcmp(m, "sink")   ? MODE_SINK
                                      : -1;
    if (opt.mode < 0) usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && ++i)
        if (ARG("--port")) opt.port = atoi(v);
        else if (ARG("--host")) snprintf(opt.host, sizeof opt.host, "%s", v);
        else if (ARG("--path")) snprintf(opt.path, sizeof opt.path, "%s", v);
        else if (ARG("--dialect"))
            opt.dialect = !strcmp(v, "genesis")    ? DIALECT_GENESIS
                          : !strcmp(v, "socketio") ? DIALECT_SOCKETIO
                          : !strcmp(v, "raw")      ? DIALECT_RAW
                                                   : (usage(), 0);
        else if (ARG("--conns")) opt.conns = atoi(v);
        else if (ARG("--subs")) opt.subs = atoi(v);
        else if (ARG("--inflight")) opt.inflight = atoi(v);
        else if (ARG("--size")) opt.size = atoi(v);
        else if (ARG("--k")) opt.k = atoi(v);
        else if (ARG("--duration")) opt.duration = atof(v);
        else if (ARG("--warmup")) opt.warmup = atof(v);
        else if (ARG("--timeout")) opt.timeout = atof(v);
        else if (ARG("--concurrency")) opt.connect_concurrency = atoi(v);
        else if (ARG("--topic")) snprintf(opt.topic, sizeof opt.topic, "%s", v);
        else if (ARG("--prefix")) snprintf(opt.prefix, sizeof opt.prefix, "%s", v);
        else if (ARG("--backoff-initial")) opt.backoff_initial = atof(v);
        else if (ARG("--backoff-cap")) opt.backoff_cap = atof(v);
        else if (ARG("--attempt-timeout")) opt.attempt_timeout = atof(v);
        else if (!strcmp(a, "--no-pub")) opt.no_pub = 1;
        else if (!strcmp(a, "--deflate")) opt.deflate = 1;
        else usage();
#undef ARG
    }
    if (opt.dialect != DIALECT_GENESIS) opt.k = 1;
    if (opt.k < 1) opt.k = 1;
    signal(SIGPIPE, SIG_IGN);
    rng_state ^= (uint64_t)getpid() * 0x100000001B3ull ^ now_ns();

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &server_addr.sin_addr) != 1) die("bad --host %s", opt.host);

    char *px = malloc((size_t)opt.size + 1);
    memset(px, 'x', (size_t)opt.size);
    px[opt.size] = 0;
    payload_x = px;

    int cap = opt.mode == MODE_FANOUT ? opt.subs + 1 : opt.mode == MODE_SINK ? 20000 : opt.conns;
    conns = calloc((size_t)cap + 1, sizeof *conns);
    for (int i = 0; i <= cap; i++) conns[i].fd = -1, conns[i].idx = i;
    if (opt.mode == MODE_SINK) n_conns = cap;
    ep = epoll_create1(EPOLL_CLOEXEC);
    t_start = now_ns();

    switch (opt.mode) {
    case MODE_ECHO:
    case MODE_FANOUT: return run_measured();
    case MODE_IDLE: return run_idle();
    case MODE_STORM: return run_storm();
    default: return run_sink();
    }
}
