// udp-director client for C++17: header-only RAII over the C ABI (capi/include/udp_director.h,
// libudp_director). Handles are std::unique_ptr with the library's free functions; failures
// throw udp_director::Error (status, message, and the director's code for refused queries).
// Used as is by the Unreal guide (Docs/engines/Unreal.md); plain C++ otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "udp_director.h"

namespace udp_director {

class Error : public std::runtime_error {
public:
    Error(UdStatus status, const std::string &message)
        : std::runtime_error(message), status_(status) {}
    UdStatus status() const noexcept { return status_; }
    /// The director's error code ("no_match", "unauthorized", ...) for a refused query.
    std::string code() const {
        std::string m = what();
        auto colon = m.find(':');
        return status_ == UD_STATUS_REFUSED && colon != std::string::npos ? m.substr(0, colon) : std::string();
    }

private:
    UdStatus status_;
};

namespace detail {
inline std::string last_error() {
    std::string msg(ud_last_error_message(nullptr, 0), '\0');
    ud_last_error_message(msg.data(), msg.size());
    msg.resize(msg.size() - 1);  // the NUL
    return msg;
}
inline void check(UdStatus s) {
    if (s != UD_STATUS_OK) throw Error(s, last_error());
}
struct QueryFree { void operator()(UdQuery *p) const noexcept { ud_query_free(p); } };
struct GrantFree { void operator()(UdGrant *p) const noexcept { ud_grant_free(p); } };
struct SessionFree { void operator()(UdSession *p) const noexcept { ud_session_free(p); } };
}  // namespace detail

inline std::string version() { return ud_version(); }

inline std::string to_string(const UdAddr &a) {
    std::string s(ud_addr_format(&a, nullptr, 0), '\0');
    if (s.empty()) return s;
    ud_addr_format(&a, s.data(), s.size());
    s.resize(s.size() - 1);
    return s;
}

/// A query's answer (move-only).
class Grant {
public:
    static Grant parse(const std::string &line) {
        UdGrant *g = nullptr;
        detail::check(ud_grant_parse(line.c_str(), &g));
        return Grant(g);
    }
    std::string token() const { return ud_grant_token(g_.get()); }
    std::string target_namespace() const { return ud_grant_target_namespace(g_.get()); }
    std::string target_name() const { return ud_grant_target_name(g_.get()); }
    std::uint64_t ttl_seconds() const { return ud_grant_ttl_seconds(g_.get()); }
    /// Sealed tokens only; 0 when the answer had none.
    std::uint64_t resume_seconds() const { return ud_grant_resume_seconds(g_.get()); }
    const UdGrant *get() const noexcept { return g_.get(); }

private:
    friend class Query;
    explicit Grant(UdGrant *g) : g_(g) {}
    std::unique_ptr<UdGrant, detail::GrantFree> g_;
};

/// A query, built fluently.
class Query {
public:
    explicit Query(const std::string &resource_type) {
        UdQuery *q = nullptr;
        detail::check(ud_query_new(resource_type.c_str(), &q));
        q_.reset(q);
    }
    Query &ns(const std::string &n) { detail::check(ud_query_namespace(q_.get(), n.c_str())); return *this; }
    Query &label(const std::string &k, const std::string &v) { detail::check(ud_query_label(q_.get(), k.c_str(), v.c_str())); return *this; }
    Query &annotation(const std::string &k, const std::string &v) { detail::check(ud_query_annotation(q_.get(), k.c_str(), v.c_str())); return *this; }
    Query &player_id(const std::string &id) { detail::check(ud_query_player_id(q_.get(), id.c_str())); return *this; }
    /// A JWT from your backend, passed through unread.
    Query &ticket(const std::string &jwt) { detail::check(ud_query_ticket(q_.get(), jwt.c_str())); return *this; }
    std::string line() const {
        std::string s(ud_query_line(q_.get(), nullptr, 0), '\0');
        ud_query_line(q_.get(), s.data(), s.size());
        s.resize(s.size() - 1);
        return s;
    }
    /// Blocking (up to 5 s); throws Error with code() for a refused query.
    Grant send(const std::string &query_addr) const {
        UdGrant *g = nullptr;
        detail::check(ud_query_send(q_.get(), query_addr.c_str(), &g));
        return Grant(g);
    }

private:
    std::unique_ptr<UdQuery, detail::QueryFree> q_;
};

/// A UDP session owning its socket. Call tick() every frame.
class Session {
public:
    Session(const Grant &grant, const std::vector<std::string> &directors, const UdConfig *config = nullptr) {
        std::vector<const char *> ptrs;
        for (const auto &d : directors) ptrs.push_back(d.c_str());
        UdSession *s = nullptr;
        detail::check(ud_session_open(ptrs.data(), ptrs.size(), grant.get(), config, &s));
        s_.reset(s);
    }
    void send(const void *data, std::size_t len) { detail::check(ud_session_send(s_.get(), static_cast<const std::uint8_t *>(data), len)); }
    void send(const std::string &data) { send(data.data(), data.size()); }
    /// Game data within `timeout`, or nothing.
    std::optional<std::vector<std::uint8_t>> receive(std::chrono::milliseconds timeout) {
        buf_.resize(65536);
        std::size_t n = 0;
        auto st = ud_session_recv(s_.get(), buf_.data(), buf_.size(), static_cast<std::uint32_t>(timeout.count()), &n);
        if (st == UD_STATUS_TIMEOUT) return std::nullopt;
        detail::check(st);
        return std::vector<std::uint8_t>(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(n));
    }
    /// The resume rule and failover; true when it sent [magic][token].
    bool tick() {
        bool resumed = false;
        detail::check(ud_session_tick(s_.get(), &resumed));
        return resumed;
    }
    void switch_to(const Grant &grant) { detail::check(ud_session_switch(s_.get(), grant.get())); }
    UdAddr remote() const { UdAddr a{}; detail::check(ud_session_remote(s_.get(), &a)); return a; }
    UdStats stats() const { UdStats s{}; detail::check(ud_session_stats(s_.get(), &s)); return s; }
    bool needs_query() const { bool b = false; detail::check(ud_session_needs_query(s_.get(), &b)); return b; }

private:
    std::unique_ptr<UdSession, detail::SessionFree> s_;
    std::vector<std::uint8_t> buf_;
};

}  // namespace udp_director
