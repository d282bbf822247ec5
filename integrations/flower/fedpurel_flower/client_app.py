"""The ClientApp: every message becomes one call of a `fedpurel.Client`.

The client's index is the SuperNode's `partition-id` (Flower's simulation engine sets
it; on a real SuperNode pass `--node-config "partition-id=K num-partitions=N"`). Flower
starts a ClientApp per message, so all that persists is the client's state directory
(private parameters, the pending personalization) — the Rust side reads and writes it.
"""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedpurel

from .records import absolute, to_numpy, to_record

app = ClientApp()


def _client(context: Context) -> fedpurel.Client:
    node, run = context.node_config, context.run_config
    if "partition-id" not in node:
        raise ValueError("the SuperNode has no `partition-id`: start it with --node-config \"partition-id=K num-partitions=N\"")
    k = int(node["partition-id"])
    # A SuperNode's own --node-config values (its disk, its copy of the configuration)
    # take precedence over the run's.
    state_root = absolute(node if "state-dir" in node else run, "state-dir")
    config = absolute(node if "fedpurel-config" in node else run, "fedpurel-config")
    client = fedpurel.Client(str(config), k, str(state_root / f"client-{k}"))
    n = node.get("num-partitions")
    if n is not None and int(n) != client.num_clients:
        raise ValueError(f"num-partitions = {n}, but the run configuration splits the data over {client.num_clients} clients")
    return client


def _round(msg: Message) -> int:
    """fedpurel's 0-based round of a message (Flower counts from 1)."""
    return int(msg.content["config"]["server-round"]) - 1


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Stage 1 of this round (after the previous round's pending stage 2)."""
    params, num_examples, metrics = _client(context).fit(to_numpy(msg.content["arrays"]), _round(msg))
    metrics["num-examples"] = num_examples
    content = RecordDict({"arrays": to_record(params), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The pending stage 2 against the new aggregate, then GM and PM on the client's test set."""
    num_examples, metrics = _client(context).evaluate(to_numpy(msg.content["arrays"]), _round(msg))
    metrics["num-examples"] = num_examples
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
