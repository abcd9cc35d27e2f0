#!/usr/bin/env bash
# A local Prometheus watching a running videop2r job (the driver's exporter, Ray's nodes) with the alert rules:
#   deploy/monitoring/prometheus.sh --driver 127.0.0.1:9400          (then open http://127.0.0.1:9090)
# Options: --driver HOST:PORT  the job's metrics.host/metrics.port        (default 127.0.0.1:9400)
#          --ray-dir DIR       the Ray head's temp dir, holding its service-discovery file   (default /tmp/ray)
#          --port N            Prometheus's own port                   (default 9090, on 127.0.0.1)
#          --data DIR          its config and database; an existing non-empty DIR needs --force (default: a new
#                              folder under /tmp)
#          --interval D        scrape and rule-evaluation interval      (default 15s)
# Runs in the foreground (Ctrl-C stops it). Grafana: docs/monitoring.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
driver=127.0.0.1:9400 ray_dir=/tmp/ray port=9090 data="" interval=15s force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --driver) driver="$2"; shift 2 ;;
    --ray-dir) ray_dir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --interval) interval="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
command -v prometheus >/dev/null || { echo "error: prometheus is not installed (apt-get install prometheus, or make setup)" >&2; exit 2; }
[[ "$driver" == *:* ]] || { echo "error: --driver wants HOST:PORT, got '$driver'" >&2; exit 2; }
if [ -z "$data" ]; then
  data="$(mktemp -d /tmp/videop2r-prometheus.XXXXXX)"
elif [ -e "$data" ] && [ -n "$(ls -A "$data" 2>/dev/null)" ] && [ "$force" != 1 ]; then
  echo "error: $data exists and is not empty; pass --force to reuse it (its config is replaced, its data kept)" >&2
  exit 2
fi
mkdir -p "$data"
sed -e "s#127.0.0.1:9400#$driver#" -e "s#/tmp/ray/prom_metrics_service_discovery.json#$ray_dir/prom_metrics_service_discovery.json#" \
    -e "s#^\(  *scrape_interval:\).*#\1 $interval#" -e "s#^\(  *evaluation_interval:\).*#\1 $interval#" \
    "$here/prometheus.yml" > "$data/prometheus.yml"
cp "$here/alerts.yml" "$data/alerts.yml"
promtool check config "$data/prometheus.yml" >/dev/null
echo "prometheus on http://127.0.0.1:$port scraping $driver and $ray_dir (config and data in $data)"
exec prometheus --config.file="$data/prometheus.yml" --storage.tsdb.path="$data/tsdb" \
  --web.listen-address="127.0.0.1:$port" --log.level=warn
