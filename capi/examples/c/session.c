/*
 * A game client in C on libudp_director: query -> token -> session -> reset -> resume, and
 * the sans-IO core answering a challenge from the conformance vectors.
 *
 *   session play QUERY_ADDR DATA_ADDR      the whole client path against a director whose
 *                                          mapping `echo` has endpoints labelled zone=z0 and
 *                                          zone=z1 (game servers echoing with a prefix)
 *   session vectors MAGIC_HEX TOKEN CHALLENGE_HEX REPLY_HEX
 *                                          the core's RESPONSE to CHALLENGE must be REPLY
 *
 * Built and run by capi/tests/c_example.rs:
 *   cc -std=c11 -Wall -Wextra -Werror -I capi/include capi/examples/c/session.c \
 *      -L target/debug -ludp_director -Wl,-rpath,target/debug -o session
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    if (argc == 6 && strcmp(argv[1], "vectors") == 0)
        return vectors(argv[2], argv[3], argv[4], argv[5]);
    fprintf(stderr, "usage: %s play QUERY DATA | vectors MAGIC TOKEN CHALLENGE REPLY\n", argv[0]);
    return 2;
}
