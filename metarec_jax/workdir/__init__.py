"""The work directory's plumbing, shared by train, eval and export.

The train state and its outer optimizer (`state`, `optim`), checkpoints
(`checkpoint`), reading one back (`restore`), what may change on a resume
(`resume`), TensorBoard and metrics files (`reporting`, `telemetry`),
progress on stderr (`progress`), signals (`preemption`) and the one-trainer
lock (`lock`). Nothing here imports train, eval or export.
"""
