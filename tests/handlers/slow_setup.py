import time

import worker

time.sleep(3600)
worker.start({"handler": lambda job: "never"})
