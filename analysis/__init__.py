"""From a multirun folder of seeds to learning curves, statistics, tables and paper figures."""
