"""FedPuReL under Flower: a ServerApp (weighted FedAvg over the global PEFT parameters,
global-model evaluation) and a ClientApp that hands every message to the fedpurel
Python module, whose Rust code trains and evaluates. Nothing here trains: it converts
Flower's records to NumPy dictionaries and calls."""
