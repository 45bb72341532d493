"""The team cache: the remote store and its protocol (remote), shared records (records), the file
systems it speaks (fs), its configuration (config), signing (signing), and a run's pulls
(prefetch)."""
