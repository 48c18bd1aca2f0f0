"""Where encoders meet stores: plan -> embed -> commit, spread by shards or Ray, kept current by a watcher."""
