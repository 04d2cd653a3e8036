"""watchdog: re-probe every upstream, restart what died, recover CUDA, page when automation cannot."""
