"""Sort a lab's own recordings with the images: ``invoke sort`` and
``python -m kilosort_docker.sorting`` (:mod:`~kilosort_docker.sorting.cli`).

Modules: :mod:`~kilosort_docker.sorting.recordings` (formats, conversion),
:mod:`~kilosort_docker.sorting.probes` (probe files, channel maps),
:mod:`~kilosort_docker.sorting.runtimes` (container runtimes),
:mod:`~kilosort_docker.sorting.record` (sort record, completion marker),
:mod:`~kilosort_docker.sorting.summary` (what a sort found),
:mod:`~kilosort_docker.sorting.runner` (``validate``, ``sort``).
"""
