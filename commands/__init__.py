"""The commands (`videop2r ...`), built on the runtime of a run in cluster/."""
