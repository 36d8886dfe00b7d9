"""The toy erasure benchmark (`t2vu toy benchmark`): real trainer and real eval stage on the toy world."""
