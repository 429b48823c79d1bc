#!/usr/bin/env bash
# nginx's stream TCP proxy on loopback, the reference for udp-director's TCP data ports
# (same nginx package and settings style as ../shared/bench/nginx-udp.sh).
# usage: nginx-tcp.sh LISTEN_PORT BACKEND_HOST:PORT [SECONDS=120]
# Listens on 127.0.0.1:LISTEN_PORT, forwards to the backend, stops by itself after SECONDS.
# Config: 2 workers (one per core here), reuseport, tcp_nodelay, 64 KiB proxy buffers (the
# director reads 64 KiB per direction too), 30 s idle timeout.
set -eu
listen=${1:?listen port}; backend=${2:?backend host:port}; secs=${3:-120}
if [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  (apt-get update -qq && apt-get install -y -qq nginx libnginx-mod-stream) >/dev/null
fi
dir=$(mktemp -d)
cat >"$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off; master_process on; pid $dir/nginx.pid;
worker_processes 2; worker_rlimit_nofile 19000;
error_log $dir/error.log crit;
events { worker_connections 18000; use epoll; multi_accept on; }
stream { server {
    listen 127.0.0.1:$listen reuseport backlog=4096;
    proxy_pass $backend;
    proxy_buffer_size 64k;
    tcp_nodelay on;
    proxy_timeout 30s;
} }
CONF
echo "nginx stream TCP proxy on 127.0.0.1:$listen -> $backend for ${secs}s (config $dir/nginx.conf)" >&2
exec timeout "$secs" nginx -c "$dir/nginx.conf" -p "$dir"
