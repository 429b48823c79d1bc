/*
 * A game client in C on libudp_director: query -> token -> session -> reset -> resume, with
 * the library's socket (play) and with the game's own socket driving the sans-IO core (core),
 * and the core answering a challenge from the conformance vectors.
 *
 *   session play QUERY_ADDR DATA_ADDR      the whole client path against a director whose
 *                                          mapping `echo` has endpoints labelled zone=z0 and
 *                                          zone=z1 (game servers echoing with a prefix)
 *   session core QUERY_ADDR DATA_ADDR      the same on an IPv4 socket of the program's own,
 *                                          driving ud_core_* (what an engine does)
 *   session vectors MAGIC_HEX TOKEN CHALLENGE_HEX REPLY_HEX
 *                                          the core's RESPONSE to CHALLENGE must be REPLY
 *
 * Built and run by capi/tests/c_example.rs:
 *   cc -std=c11 -Wall -Wextra -Werror -I capi/include capi/examples/c/session.c \
 *      -L target/debug -ludp_director -Wl,-rpath,target/debug -o session
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "udp_director.h"

static int fail(const char *what, enum UdStatus status) {
    char msg[512];
    ud_last_error_message(msg, sizeof msg);
    fprintf(stderr, "%s failed: status %d: %s\n", what, (int)status, msg);
    return 1;
}

#define CHECK(call)                                      \
    do {                                                 \
        enum UdStatus s_ = (call);                       \
        if (s_ != UD_STATUS_OK) return fail(#call, s_);  \
    } while (0)

/* Sends `payload` until a reply starting with `prefix` arrives (at most ~5 s). */
static int exchange(struct UdSession *s, const char *payload, const char *prefix) {
    unsigned char buf[65536];
    for (int i = 0; i < 50; i++) {
        CHECK(ud_session_send(s, (const uint8_t *)payload, strlen(payload)));
        size_t n = 0;
        enum UdStatus st = ud_session_recv(s, buf, sizeof buf - 1, 100, &n);
        if (st == UD_STATUS_OK) {
            buf[n] = 0;
            if (strncmp((const char *)buf, prefix, strlen(prefix)) == 0) {
                printf("reply %s\n", (const char *)buf);
                return 0;
            }
        } else if (st != UD_STATUS_TIMEOUT) {
            return fail("ud_session_recv", st);
        }
        CHECK(ud_session_tick(s, NULL));
    }
    fprintf(stderr, "no reply starting with %s to %s\n", prefix, payload);
    return 1;
}

static int query(const char *query_addr, const char *zone, struct UdGrant **grant) {
    struct UdQuery *q = NULL;
    CHECK(ud_query_new("echo", &q));
    enum UdStatus st = ud_query_label(q, "zone", zone);
    if (st == UD_STATUS_OK) st = ud_query_send(q, query_addr, grant);
    ud_query_free(q);
    if (st != UD_STATUS_OK) return fail("query", st);
    printf("token %s for %s/%s ttl %llu\n", ud_grant_token(*grant),
           ud_grant_target_namespace(*grant), ud_grant_target_name(*grant),
           (unsigned long long)ud_grant_ttl_seconds(*grant));
    return 0;
}

static int play(const char *query_addr, const char *data_addr) {
    printf("udp_director %s\n", ud_version());

    /* An error answer: a code and a message, no handle. */
    struct UdQuery *bad = NULL;
    struct UdGrant *none = NULL;
    CHECK(ud_query_new("no-such-type", &bad));
    enum UdStatus st = ud_query_send(bad, query_addr, &none);
    ud_query_free(bad);
    char msg[512];
    ud_last_error_message(msg, sizeof msg);
    if (st != UD_STATUS_REFUSED || strncmp(msg, "unknown_resource_type:", 22) != 0 || none) {
        fprintf(stderr, "expected unknown_resource_type, got %d: %s\n", (int)st, msg);
        return 1;
    }
    printf("refused %s\n", msg);

    /* 1. QUERY, 2. CONNECT and play. */
    struct UdGrant *first = NULL, *second = NULL;
    if (query(query_addr, "z0", &first)) return 1;
    struct UdSession *s = NULL;
    const char *directors[] = {data_addr};
    CHECK(ud_session_open(directors, 1, first, NULL, &s));
    if (exchange(s, "c:hello-a", "a:")) return 1;

    /* 3. RESET to the other server, same socket. */
    if (query(query_addr, "z1", &second)) return 1;
    CHECK(ud_session_switch(s, second));
    if (exchange(s, "c:hello-b", "b:")) return 1;

    /* Resume: stay quiet until the rule sends [magic][token]; play goes on. */
    bool resumed = false;
    unsigned char buf[2048];
    for (int i = 0; i < 40 && !resumed; i++) {
        size_t n = 0;
        enum UdStatus r = ud_session_recv(s, buf, sizeof buf, 50, &n);
        if (r != UD_STATUS_OK && r != UD_STATUS_TIMEOUT) return fail("ud_session_recv", r);
        CHECK(ud_session_tick(s, &resumed));
    }
    if (!resumed) {
        fprintf(stderr, "the resume rule never fired\n");
        return 1;
    }
    if (exchange(s, "c:after-resume", "b:")) return 1;

    struct UdStats stats;
    CHECK(ud_session_stats(s, &stats));
    struct UdAddr remote;
    char remote_text[64];
    CHECK(ud_session_remote(s, &remote));
    ud_addr_format(&remote, remote_text, sizeof remote_text);
    printf("remote %s resumes %llu failovers %llu\n", remote_text,
           (unsigned long long)stats.resumes, (unsigned long long)stats.failovers);
    ud_session_free(s);
    ud_grant_free(first);
    ud_grant_free(second);
    printf("done\n");
    return 0;
}

/* ---- The sans-IO core on the program's own socket (what an engine does). ---- */

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static struct sockaddr_in to_sockaddr(const struct UdAddr *a) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(a->port);
    memcpy(&sa.sin_addr, a->ip, 4);
    return sa;
}

struct Game {
    int fd;
    struct UdCore *core;
    unsigned resumes_sent;
};

/* Sends everything the core has waiting. */
static int flush(struct Game *g) {
    uint8_t buf[UD_MAX_CONTROL_LEN];
    for (;;) {
        struct UdTransmit t;
        CHECK(ud_core_poll_transmit(g->core, now_us(), buf, sizeof buf, &t));
        if (t.len == 0) return 0;
        if (t.kind == UD_TRANSMIT_KIND_RESUME) g->resumes_sent++;
        struct sockaddr_in to = to_sockaddr(&t.destination);
        sendto(g->fd, buf, t.len, 0, (struct sockaddr *)&to, sizeof to);
    }
}

/* Waits until the next deadline or `max_ms`, feeding the core what arrives and firing its
 * timers; returns 1 with the game datagram in `out` when one came. */
static int pump(struct Game *g, int max_ms, char *out, size_t cap) {
    uint64_t at = 0;
    if (ud_core_poll_timeout(g->core, &at) != UD_STATUS_OK) return -1;
    uint64_t now = now_us();
    int wait = at > now ? (int)((at - now) / 1000u) + 1 : 0;
    if (wait > max_ms) wait = max_ms;
    struct pollfd p = {.fd = g->fd, .events = POLLIN};
    int got = 0;
    if (poll(&p, 1, wait) > 0) {
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(g->fd, out, cap - 1, 0, (struct sockaddr *)&from, &len);
        if (n >= 0) {
            struct UdAddr src = {.family = 4, .port = ntohs(from.sin_port)};
            memcpy(src.ip, &from.sin_addr, 4);
            enum UdIncoming kind;
            if (ud_core_handle_datagram(g->core, now_us(), &src, (const uint8_t *)out, (size_t)n, &kind) != UD_STATUS_OK) return -1;
            if (kind == UD_INCOMING_DATA) {
                out[n] = 0;
                got = 1;
            }
        }
    }
    if (ud_core_handle_timeout(g->core, now_us()) != UD_STATUS_OK) return -1;
    if (flush(g)) return -1;
    return got;
}

static int core_exchange(struct Game *g, const char *payload, const char *prefix) {
    char buf[2048];
    for (int i = 0; i < 50; i++) {
        struct UdAddr remote;
        CHECK(ud_core_remote(g->core, &remote));
        struct sockaddr_in to = to_sockaddr(&remote);
        sendto(g->fd, payload, strlen(payload), 0, (struct sockaddr *)&to, sizeof to);
        uint64_t until = now_us() + 100000u;
        while (now_us() < until) {
            int r = pump(g, 20, buf, sizeof buf);
            if (r < 0) return fail("pump", UD_STATUS_IO);
            if (r == 1 && strncmp(buf, prefix, strlen(prefix)) == 0) {
                printf("reply %s\n", buf);
                return 0;
            }
        }
    }
    fprintf(stderr, "no reply starting with %s to %s\n", prefix, payload);
    return 1;
}

static int own_socket(const char *query_addr, const char *data_addr) {
    struct UdGrant *first = NULL, *second = NULL;
    if (query(query_addr, "z0", &first)) return 1;
    struct UdAddr director;
    CHECK(ud_addr_parse(data_addr, &director));
    if (director.family != 4) return fail("an IPv4 data address", UD_STATUS_INVALID_ARGUMENT);
    struct Game g = {.fd = socket(AF_INET, SOCK_DGRAM, 0)};
    struct sockaddr_in any = {.sin_family = AF_INET};
    if (g.fd < 0 || bind(g.fd, (struct sockaddr *)&any, sizeof any) != 0) {
        perror("socket");
        return 1;
    }
    CHECK(ud_core_new(&director, 1, ud_grant_token(first), ud_grant_reopen_seconds(first), NULL, now_us(), &g.core));
    if (flush(&g)) return 1; /* the token */
    if (core_exchange(&g, "core:hello-a", "a:")) return 1;

    if (query(query_addr, "z1", &second)) return 1;
    CHECK(ud_core_switch(g.core, now_us(), ud_grant_token(second), ud_grant_reopen_seconds(second)));
    if (flush(&g)) return 1; /* [magic][new token] */
    if (core_exchange(&g, "core:hello-b", "b:")) return 1;

    /* Quiet: the core's timer sends [magic][token]; play goes on. */
    unsigned before = g.resumes_sent;
    char buf[2048];
    uint64_t until = now_us() + 3000000u;
    while (g.resumes_sent == before && now_us() < until) {
        if (pump(&g, 50, buf, sizeof buf) < 0) return fail("pump", UD_STATUS_IO);
    }
    if (g.resumes_sent == before) {
        fprintf(stderr, "the core never resumed\n");
        return 1;
    }
    if (core_exchange(&g, "core:after-resume", "b:")) return 1;
    struct UdStats stats;
    CHECK(ud_core_stats(g.core, &stats));
    printf("core resumes %llu\n", (unsigned long long)stats.resumes);
    ud_core_free(g.core);
    ud_grant_free(first);
    ud_grant_free(second);
    close(g.fd);
    printf("done\n");
    return 0;
}

static size_t unhex(const char *hex, unsigned char *out, size_t cap) {
    size_t n = strlen(hex) / 2;
    if (n > cap) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return 0;
        out[i] = (unsigned char)v;
    }
    return n;
}

static int vectors(const char *magic_hex, const char *token, const char *challenge_hex,
                   const char *reply_hex) {
    unsigned char magic[32], challenge[256], reply[256], buf[UD_MAX_CONTROL_LEN];
    size_t magic_len = unhex(magic_hex, magic, sizeof magic);
    size_t challenge_len = unhex(challenge_hex, challenge, sizeof challenge);
    size_t reply_len = unhex(reply_hex, reply, sizeof reply);
    struct UdConfig cfg;
    CHECK(ud_config_default(&cfg));
    cfg.magic = magic;
    cfg.magic_len = magic_len;
    cfg.seed = 1;
    struct UdAddr director;
    CHECK(ud_addr_parse("127.0.0.1:7777", &director));
    struct UdCore *core = NULL;
    CHECK(ud_core_new(&director, 1, token, 30, &cfg, 0, &core));
    struct UdTransmit t;
    CHECK(ud_core_poll_transmit(core, 0, buf, sizeof buf, &t));
    if (t.kind != UD_TRANSMIT_KIND_TOKEN || t.len != strlen(token) || memcmp(buf, token, t.len)) {
        fprintf(stderr, "the first datagram is not the token\n");
        return 1;
    }
    enum UdIncoming kind;
    CHECK(ud_core_handle_datagram(core, 1000, &director, challenge, challenge_len, &kind));
    if (kind != UD_INCOMING_CHALLENGE) {
        fprintf(stderr, "not read as a challenge: %d\n", (int)kind);
        return 1;
    }
    CHECK(ud_core_poll_transmit(core, 1000, buf, sizeof buf, &t));
    if (t.kind != UD_TRANSMIT_KIND_RESPONSE || t.len != reply_len || memcmp(buf, reply, reply_len)) {
        fprintf(stderr, "the response differs from the vector\n");
        return 1;
    }
    uint64_t at = 0;
    CHECK(ud_core_poll_timeout(core, &at));
    ud_core_free(core);
    printf("vectors ok, next timer at %llu us\n", (unsigned long long)at);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "play") == 0) return play(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "core") == 0) return own_socket(argv[2], argv[3]);
    if (argc == 6 && strcmp(argv[1], "vectors") == 0)
        return vectors(argv[2], argv[3], argv[4], argv[5]);
    fprintf(stderr, "usage: %s play|core QUERY DATA | vectors MAGIC TOKEN CHALLENGE REPLY\n", argv[0]);
    return 2;
}
