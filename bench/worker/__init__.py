"""Worker benchmark: the Faust worker's throughput and latency beside a raw-Kafka ceiling.

Run as ``python -m bench.worker`` (:mod:`bench.worker.cli`, the one entry point; its doc says
what each phase measures). The package is split by job: :mod:`~bench.worker.harness` (the
configuration, the processes it starts and stops, the dataset, topics and scraping),
:mod:`~bench.worker.phases` (what is measured) and :mod:`~bench.worker.report` (the machine,
the problems a run shows, the tables).
"""
