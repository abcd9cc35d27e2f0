"""Test and demo fixtures: the synthetic video task and the tiny random Qwen2.5-VL. Nothing here is needed to
train on real data; it exists so that the system runs end to end on a CPU box without downloads."""
