"""Sort many recordings on a SLURM cluster: one array job, one task per recording.

Modules: :mod:`.recordings` (the list of recordings, TOML or CSV), :mod:`.script` (the sbatch
script), :mod:`.slurm` (the SLURM commands: ``sbatch``, ``squeue``, ``scontrol``),
:mod:`.record` (the batch record that status and resume read), :mod:`.status` (per-recording
state), :mod:`.submit` (``invoke sort-batch``), :mod:`.apptainer` (Apptainer command lines and
definition file; not run in CI).

Each task runs ``python -m kilosort_docker.sorting`` for its row, which writes
``sort-record.json`` into the row's output folder and, last of all on success, the completion
marker ``sort-complete.json``: a recording is finished when its marker exists.
"""
