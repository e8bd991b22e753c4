"""Posts COUNT batches to mpconnect with mParticle's official Python SDK, as a customer would,
and prints the source_request_id of each batch that was accepted, one a line.

usage: post_events.py HOST KEY SECRET COUNT PREFIX
"""
import sys

import mparticle

host, key, secret, count, prefix = sys.argv[1:6]
config = mparticle.Configuration()
config.api_key, config.api_secret, config.host = key, secret, host
api = mparticle.EventsApi(config)

for i in range(int(count)):
    batch = mparticle.Batch()
    batch.environment = "development"
    batch.source_request_id = f"{prefix}-{i}"
    identities = mparticle.UserIdentities()
    identities.customerid = f"customer-{i}"
    batch.user_identities = identities
    event = mparticle.AppEvent(event_name="Played", custom_event_type="navigation")
    event.custom_attributes = {"song": f"song-{i}"}
    batch.events = [event, mparticle.ScreenViewEvent(screen_name="Home")]
    api.upload_events(batch)
    print(batch.source_request_id, flush=True)
