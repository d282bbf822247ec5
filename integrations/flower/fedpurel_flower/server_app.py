"""The ServerApp: Flower's weighted FedAvg over the global PEFT parameters, started
from fedpurel's initial global parameters, with the global model evaluated on the
global test set by `fedpurel.Server` after every round.

Writes to `out-dir`: `global-<round>.safetensors` (the aggregate of each 0-based round,
as `fedpurel run` keeps in checkpoints/rounds/) and `metrics.jsonl` (per round: `gm` on
the global test set, `clients` — the clients' evaluation averaged as `fedpurel run`
averages PM, unweighted over clients — and `train`).

Which clients train is Flower's choice (`fraction-train`); `fedpurel run`'s seeded
sampler is not used. With every client training and evaluating each round the
numbers are those of `fedpurel run --frac 1.0`.
"""

import json
import math

from flwr.app import Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import fedpurel

from .records import absolute, to_numpy, to_record

app = ServerApp()

# Keys averaged with the clients' test-set sizes as weights (fedpurel run's PM TKL is a
# per-sample mean), keys summed; every other key is an unweighted mean over the clients
# whose value is a number (NaN: the client has no test sample of that group) — PM All
# and Many/Medium/Few as fedpurel run computes them.
_SAMPLE_WEIGHTED = ("gm-tkl", "pm-tkl")
_SUMMED = ("gm-correct", "pm-correct", "num-examples")
_NOT_AVERAGED = ("client", "stage2-round", "stage2-exact")


def client_means(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """The clients' evaluation metrics combined as fedpurel run combines them."""
    metrics = sorted((next(iter(r.metric_records.values())) for r in records), key=lambda m: m["client"])
    out = {"clients": len(metrics)}
    for key in sorted({k for m in metrics for k in m} - set(_NOT_AVERAGED)):
        have = [m for m in metrics if key in m and not math.isnan(m[key])]
        if key in _SUMMED:
            out[key] = sum(m[key] for m in have)
        elif key in _SAMPLE_WEIGHTED:
            n = sum(m[weight_key] for m in have)
            out[key] = sum(m[key] * m[weight_key] for m in have) / n if n else math.nan
        else:
            out[key] = sum(m[key] for m in have) / len(have) if have else math.nan
    for model in ("gm", "pm"):
        if out.get("num-examples"):
            out[f"{model}-weighted-accuracy"] = 100.0 * out.get(f"{model}-correct", 0) / out["num-examples"]
    # Personalizations completed against a newer global model than their round's.
    out["stage2-late"] = sum(1 for m in metrics if m["stage2-round"] >= 0 and m["stage2-exact"] == 0)
    return MetricRecord(out)


def _plain(record) -> dict:
    """A MetricRecord as JSON-ready numbers (NaN: null)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dict(record).items()}


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    server = fedpurel.Server(str(absolute(cfg, "fedpurel-config")))
    out_dir = absolute(cfg, "out-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    k = server.num_clients

    def evaluate(server_round: int, arrays) -> MetricRecord:
        params = to_numpy(arrays)
        if server_round >= 1:
            fedpurel.save_parameters(str(out_dir / f"global-{server_round - 1:04}.safetensors"), params)
        return MetricRecord(server.evaluate(params))

    strategy = FedAvg(
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=float(cfg["fraction-evaluate"]),
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=k,
        evaluate_metrics_aggr_fn=client_means,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=to_record(server.initial_parameters()),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=evaluate,
    )
    lines = []
    for r in sorted(result.evaluate_metrics_serverapp):
        if r == 0:
            continue
        lines.append(
            json.dumps(
                {
                    "round": r - 1,
                    "gm": _plain(result.evaluate_metrics_serverapp[r]),
                    "clients": _plain(result.evaluate_metrics_clientapp.get(r, {})),
                    "train": _plain(result.train_metrics_clientapp.get(r, {})),
                }
            )
        )
    tmp = out_dir / "metrics.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out_dir / "metrics.jsonl")
