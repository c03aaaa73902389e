"""A run's files and their formats: the run folder, checkpoints, the resume policy, provenance,
metric writers, and atomic writes. Training, the analysis and the studies read and write run
folders only through :mod:`trpo.io.run_folder`."""
