# Creates the sealed-token key Secret $SECRET (key `token-keys`, one line
# "<id> <base64 of 32 random bytes>") in this pod's namespace if it does not exist yet, and
# leaves an existing one alone. Run by the chart's pre-install/pre-upgrade hook Job with
# `sh -eu`: the key is drawn here, inside the cluster, so it is in no rendered manifest and
# no Helm release. Talks to the API server with curl and the pod's service account.
# API and SA may be overridden (tests/manifests.rs runs this against a fake API server).
API=${API:-https://kubernetes.default.svc}
SA=${SA:-/var/run/secrets/kubernetes.io/serviceaccount}
ns=$(cat "$SA/namespace")
url="$API/api/v1/namespaces/$ns/secrets"
api() {
  curl -sS --cacert "$SA/ca.crt" -H "Authorization: Bearer $(cat "$SA/token")" \
    -o "${TMPDIR:-/tmp}/answer" -w '%{http_code}' "$@"
}

code=$(api "$url/$SECRET")
case "$code" in
  200) echo "Secret $ns/$SECRET exists: kept"; exit 0 ;;
  404) ;;
  *) echo "reading Secret $ns/$SECRET: HTTP $code"; cat "${TMPDIR:-/tmp}/answer"; exit 1 ;;
esac

key=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
keys=$(printf 'k%s %s\n' "$(date -u +%Y%m%d)" "$key" | base64 | tr -d '\n')
body=$(printf '{"apiVersion":"v1","kind":"Secret","type":"Opaque","metadata":{"name":"%s","labels":%s},"data":{"token-keys":"%s"}}' \
  "$SECRET" "$LABELS" "$keys")
code=$(api -X POST -H 'Content-Type: application/json' --data "$body" "$url")
case "$code" in
  201) echo "Secret $ns/$SECRET created with one new key" ;;
  409) echo "Secret $ns/$SECRET was created meanwhile: kept" ;;
  *) echo "creating Secret $ns/$SECRET: HTTP $code"; cat "${TMPDIR:-/tmp}/answer"; exit 1 ;;
esac
