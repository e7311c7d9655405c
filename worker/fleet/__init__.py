"""One endpoint on Redis Streams: the key layout and atomic steps both sides share, the
worker's job source (sources/redis_queue.py) and the RunPod-compatible gateway."""
