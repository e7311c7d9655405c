"""`make soak`: thousands of jobs through the local API, the stand-in RunPod queue and a
Redis endpoint while processes die at random; it prints, per mode, what was submitted,
the faults injected, and every bound of the delivery contract, and exits 1 when one is
broken (docs/reliability.md, "The soak")."""
