# `helm test`: the director answers a query and is ready. Run with `sh -eu` by the chart's
# test pod (tests/manifests.rs runs it against a director on loopback, and against nothing).
# One query line to $QUERY_HOST:$QUERY_PORT must be answered with a JSON line: a token, or an
# error such as no_match while no game server is Ready (the query server works either way).
answer=$(printf '{"resourceType":"%s"}\n' "$RESOURCE_TYPE" \
  | curl -sS --max-time 3 "telnet://$QUERY_HOST:$QUERY_PORT" 2>/dev/null || true)
case "$answer" in
  *'"token"'*|*'"error"'*) echo "query answered: $answer" ;;
  *) echo "no answer from the query port $QUERY_HOST:$QUERY_PORT: '$answer'"; exit 1 ;;
esac
# /readyz on the admin port: listeners bound and every cache synced.
curl -fsS --max-time 5 "$ADMIN_URL/readyz"
echo
echo "ready: $ADMIN_URL/readyz"
