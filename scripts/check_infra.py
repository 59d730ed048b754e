#!/usr/bin/env python3
"""Checks the limits of infra/azure that no linter knows (checkov has no rules for Container
Apps): the grace period within the platform's 600 s, a scale-out point before a replica is full,
the fleet's Redis over TLS with its URL from Key Vault, the metrics collector on the bridge's
metrics port, the alert rules, and the CPU figures the scale target is computed from. Reads
main.bicep and main.parameters.json; prints every problem and exits 1 if there is any."""

import json
import re
import sys
from pathlib import Path

AZURE = Path(__file__).resolve().parent.parent / "infra" / "azure"
GRACE_LIMIT_S = 600  # Container Apps' maximum terminationGracePeriodSeconds
ALERTS = [
    "WebhooksButNoCallsAnswered",
    "AiConnectFailures",
    "FramesSentLate",
    "CapacityAbove90Percent",
    "RedisDegraded",
]

bicep = (AZURE / "main.bicep").read_text()
parameters = json.loads((AZURE / "main.parameters.json").read_text())["parameters"]
problems = []


def param(name):
    """(default, minValue, maxValue) of an int parameter."""
    match = re.search(
        r"((?:@\w+\([^)]*\)\s*)*)param\s+" + name + r"\s+int\s*=\s*(\d+)", bicep
    )
    if not match:
        problems.append(f"main.bicep has no int parameter {name} with a default")
        return None, None, None
    decorators, default = match.group(1), int(match.group(2))
    low = re.search(r"@minValue\((\d+)\)", decorators)
    high = re.search(r"@maxValue\((\d+)\)", decorators)
    return default, int(low.group(1)) if low else None, int(high.group(1)) if high else None


def value(name):
    """The parameters file's value, else the template's default."""
    default = param(name)[0]
    return parameters.get(name, {}).get("value", default)


def var_int(name):
    match = re.search(r"var\s+" + name + r"\s*=\s*(\d+)\b", bicep)
    if not match:
        problems.append(f"main.bicep has no numeric var {name}")
        return 0
    return int(match.group(1))


def need(condition, problem):
    if not condition:
        problems.append(problem)


# 1. The grace period: DRAIN_TIMEOUT + 30 s, within the platform's limit, for every allowed value.
drain_default, _, drain_max = param("drainTimeoutSeconds")
need(
    "terminationGracePeriodSeconds: drainTimeoutSeconds + 30" in bicep,
    "terminationGracePeriodSeconds is not drainTimeoutSeconds + 30",
)
need(drain_max is not None, "drainTimeoutSeconds has no @maxValue: the grace period is unbounded")
if drain_max is not None:
    need(
        drain_max + 30 <= GRACE_LIMIT_S,
        f"drainTimeoutSeconds may be {drain_max} s: the grace period ({drain_max + 30} s) exceeds {GRACE_LIMIT_S} s",
    )
    need(
        value("drainTimeoutSeconds") <= drain_max,
        f"main.parameters.json sets drainTimeoutSeconds above {drain_max}",
    )

# 2. A replica is added before one is full, at a target the scale rule can use.
max_calls = value("maxCallsPerReplica")
share = value("scaleOutAtPercentOfMax")
permille = value("cpuPerCallPermille")
share_max = param("scaleOutAtPercentOfMax")[2]
need(share_max is not None and share_max < 100, "scaleOutAtPercentOfMax may reach 100 %: scale-out only when full")
replica_milli = var_int("bridgeCpuMilli") + var_int("collectorCpuMilli")
need(
    "replicaCpuMilli = bridgeCpuMilli + collectorCpuMilli" in bicep,
    "replicaCpuMilli is not the sum of the containers' CPU",
)
need(
    "(maxCallsPerReplica * scaleOutAtPercentOfMax * cpuPerCallPermille) / replicaCpuMilli" in bicep,
    "targetCpuPercent is not derived from the calls, the share and the cost per call",
)
if all(isinstance(v, int) for v in (max_calls, share, permille)) and replica_milli:
    target = max(10, min(90, max_calls * share * permille // replica_milli))
    calls_at_target = target * replica_milli / permille / 100
    need(
        calls_at_target < max_calls,
        f"at the CPU target ({target} %) a replica carries {calls_at_target:.0f} calls, not fewer than its {max_calls}",
    )
    print(
        f"scale-out: {max_calls} calls x {share} % x {permille}/1000 of a core = "
        f"{max_calls * share * permille / 100_000:.3f} cores = {target} % of {replica_milli / 1000} cores"
    )
need("value: string(targetCpuPercent)" in bicep, "the CPU scale rule does not use targetCpuPercent")
# The bridge admits by its measured headroom, and the scale rule adds a replica before that
# headroom runs out on CPU: the bridge's CPU at the target is below its admission CPU target.
need(
    re.search(r"name: 'ADMISSION'\s*\n\s*value: 'headroom'", bicep) is not None,
    "the bridge does not admit by its measured headroom (ADMISSION=headroom)",
)
admission_target = re.search(r"name: 'ADMISSION_CPU_TARGET'\s*\n\s*value: '([0-9.]+)'", bicep)
need(admission_target is not None, "ADMISSION_CPU_TARGET is not set")
if admission_target is not None and all(isinstance(v, int) for v in (max_calls, share, permille)) and replica_milli:
    admit_milli = float(admission_target.group(1)) * var_int("bridgeCpuMilli")
    need(
        0 < admit_milli <= var_int("bridgeCpuMilli"),
        f"ADMISSION_CPU_TARGET {admission_target.group(1)} is not a share of the bridge's core",
    )
    need(
        target * replica_milli / 100 < admit_milli,
        f"at the CPU target the replica uses {target * replica_milli / 100:.0f} millicores, not below the {admit_milli:.0f} its bridge admits calls up to",
    )
    print(
        f"headroom: a replica is added at {target * replica_milli / 100:.0f} millicores, "
        f"its bridge refuses calls from {admit_milli:.0f} (ADMISSION_CPU_TARGET {admission_target.group(1)})"
    )
# The containers' CPU requests match the figures the target is computed from.
need(
    var_int("bridgeCpuMilli") == 1000 and "cpu: json('1.0')" in bicep,
    "the bridge container's CPU is not the bridgeCpuMilli (1.0 core)",
)
need(
    var_int("collectorCpuMilli") == 250 and "cpu: json('0.25')" in bicep,
    "the collector container's CPU is not the collectorCpuMilli (0.25 core)",
)

# 3. The fleet's Redis: TLS only, its URL (with the key) from Key Vault.
need("clientProtocol: 'Encrypted'" in bicep, "Redis accepts clients without TLS")
need("minimumTlsVersion: '1.2'" in bicep, "Redis allows TLS below 1.2")
need("value: 'rediss://" in bicep, "the Redis URL is not rediss:// (TLS)")
need(
    re.search(r"name: 'REDIS_URL'\s*\n\s*secretRef: 'redis-url'", bicep) is not None,
    "REDIS_URL is not read from the redis-url secret",
)
need(
    re.search(r"name: 'redis-url'\s*\n\s*keyVaultUrl:", bicep) is not None,
    "the redis-url secret does not come from Key Vault",
)

# 4. The collector scrapes the bridge's metrics port into managed Prometheus.
need(var_int("metricsPort") > 0, "no metricsPort")
need(
    re.search(r"name: 'METRICS_PORT'\s*\n\s*value: string\(metricsPort\)", bicep) is not None,
    "METRICS_PORT is not metricsPort",
)
need('"localhost:__METRICS_PORT__"' in bicep, "the collector does not scrape localhost:METRICS_PORT")
need("'__METRICS_PORT__', string(metricsPort)" in bicep, "the collector's port is not metricsPort")
need("prometheusremotewrite" in bicep, "the collector does not remote-write to managed Prometheus")

# 5. The alert rules, and readiness that never turns a full replica away.
for alert in ALERTS:
    need(f"alert: '{alert}'" in bicep, f"no alert rule {alert}")
need("path: '/ready'" in bicep, "the readiness probe does not ask /ready")
need(param("minReplicas")[1] is not None and param("minReplicas")[1] >= 1, "minReplicas may be 0")

if problems:
    for problem in problems:
        print(f"infra: {problem}", file=sys.stderr)
    sys.exit(1)
print("infra limits: ok")
