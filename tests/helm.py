"""Renders or lints the chart with real Helm (Helm 4's Go SDK through helm-python-sdk, the
same code as `helm template` / `helm lint`; no helm binary needed). Called by
tests/manifests.rs; prints one JSON object on stdout.

    python3 tests/helm.py render CHART_DIR VALUES_JSON
    python3 tests/helm.py lint CHART_DIR VALUES_JSON
"""
import json
import sys

try:
    import helm_python as helm
except ImportError:
    print(json.dumps({"error": "helm-python-sdk is not installed: pip install helm-python-sdk"}))
    sys.exit(3)

mode, chart_dir, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    if mode == "render":
        chart = helm.Chart.load(chart_dir)
        out = chart.render(values=values, name="udp-director", namespace="udp-director", is_install=True)
        print(json.dumps({"manifests": out}))
    elif mode == "lint":
        print(json.dumps({"lint": helm.lint(chart_dir, values, strict=True, namespace="udp-director")}))
    else:
        raise SystemExit(f"unknown mode {mode}")
except helm.HelmError as e:
    print(json.dumps({"error": str(e)}))
