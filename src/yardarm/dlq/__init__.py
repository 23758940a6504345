"""`yardarm dlq`: read the dead-letter stream and put its messages back where they failed.

Consumers dead-letter a message they gave up on to `dlq.<subject>` with headers that say
where it came from and why (see `yardarm_kit.dead_letters`); this package reads those
headers back and republishes the message once its cause is fixed.
"""
