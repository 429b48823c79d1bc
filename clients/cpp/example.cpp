// A game client on udp_director.hpp: query -> token -> session -> reset -> resume.
//   example QUERY_ADDR DATA_ADDR   (mapping `echo`: zone=z0 echoes "a:", zone=z1 "b:")
// Built and run by capi/tests/cpp.rs.
#include <cstdio>
#include <string>

#include "udp_director.hpp"

namespace ud = udp_director;

static std::string exchange(ud::Session &s, const std::string &payload, const std::string &prefix) {
    for (int i = 0; i < 50; i++) {
        s.send(payload);
        if (auto reply = s.receive(std::chrono::milliseconds(100))) {
            std::string text(reply->begin(), reply->end());
            if (text.rfind(prefix, 0) == 0) return text;
        }
        s.tick();
    }
    throw std::runtime_error("no reply starting with " + prefix + " to " + payload);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s QUERY_ADDR DATA_ADDR\n", argv[0]);
        return 2;
    }
    try {
        std::printf("udp_director %s\n", ud::version().c_str());
        try {
            ud::Query("no-such-type").send(argv[1]);
            std::fprintf(stderr, "an unknown type was answered\n");
            return 1;
        } catch (const ud::Error &e) {
            if (e.code() != "unknown_resource_type") throw;
            std::printf("refused %s\n", e.code().c_str());
        }
        auto first = ud::Query("echo").label("zone", "z0").send(argv[1]);
        auto second = ud::Query("echo").label("zone", "z1").send(argv[1]);
        ud::Session session(first, {argv[2]});
        std::printf("reply %s\n", exchange(session, "cpp:hello-a", "a:").c_str());
        session.switch_to(second);
        std::printf("reply %s\n", exchange(session, "cpp:hello-b", "b:").c_str());
        bool resumed = false;
        for (int i = 0; i < 40 && !resumed; i++) {
            session.receive(std::chrono::milliseconds(50));
            resumed = session.tick();
        }
        if (!resumed) throw std::runtime_error("the resume rule never fired");
        std::printf("reply %s\n", exchange(session, "cpp:after-resume", "b:").c_str());
        std::printf("remote %s resumes %llu\n", ud::to_string(session.remote()).c_str(),
                    static_cast<unsigned long long>(session.stats().resumes));
        std::printf("done\n");
        return 0;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "failed: %s\n", e.what());
        return 1;
    }
}
