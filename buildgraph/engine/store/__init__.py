"""The local cache: content-addressed objects and action entries (cache), what only `buildgraph
cache ...` runs (maintenance), memoised descriptions (memo)."""
