"""`worker.serverless.modules.rp_logger`: where the SDK keeps RunPodLogger."""
