"""Drives a running mpconnect ingest with mParticle's official Python SDK (`pip install
mparticle`), as a customer's server would. Writes what it sent, as the SDK serialised it, so the
test can compare it field for field with what reached the queue.

usage: send_with_sdk.py HOST KEY SECRET OUT.json
"""
import json
import sys

import mparticle
from mparticle import (
    AppEvent, ApplicationInformation, ApplicationStateTransitionEvent, Batch, BreadcrumbEvent,
    CommerceEvent, ConsentState, CrashReportEvent, DeviceCurrentState, DeviceInformation,
    FirstRunEvent, GDPRConsentState, GeoLocation, NetworkPerformanceEvent, OptOutEvent, Product,
    ProductAction, ProductImpression, ProfileEvent, Promotion, PromotionAction,
    PushMessageEvent, PushRegistrationEvent, ScreenViewEvent, SessionEndEvent,
    SessionStartEvent, ShoppingCart, SourceInformation, UserIdentities,
)
from mparticle.models.ccpa_consent_state import CCPAConsentState
from mparticle.models.user_attribute_change_event import UserAttributeChangeEvent
from mparticle.rest import ApiException

host, key, secret, out = sys.argv[1:5]


def api(secret_to_use):
    config = mparticle.Configuration()
    config.api_key, config.api_secret = key, secret_to_use
    config.host = host  # before the EventsApi is made: it copies the host
    return mparticle.EventsApi(config)


def batch(request_id, events, **extra):
    b = Batch()
    b.environment = "development"
    b.source_request_id = request_id
    b.events = events
    identities = UserIdentities()
    identities.customerid = "cust-" + request_id
    identities.email = request_id + "@example.com"
    b.user_identities = identities
    b.user_attributes = {"$firstname": "Ada", "tags": ["x", "y"], "visits": 3}
    device = DeviceInformation()
    device.ios_advertising_id = "613ff528-afd1-4c1b-9628-e6ac02ec9e1b"
    device.platform = "iOS"
    b.device_info = device
    for k, v in extra.items():
        setattr(b, k, v)
    return b


ts = 1700000000000
location = GeoLocation(40.7128, -74.006)
state = DeviceCurrentState()
state.battery_level = 0.5
state.data_connection_type = "wifi"

custom = AppEvent(event_name="Played", custom_event_type="media",
                  custom_attributes={"song": "So What", "seconds": 545, "liked": True})
custom.timestamp_unixtime_ms = ts
custom.source_message_id = "11111111-1111-4111-8111-111111111111"
custom.location = location
custom.device_current_state = state

product = Product()
product.id, product.name, product.price, product.quantity = "sku-1", "Trumpet", 499.99, 2
product.custom_attributes = {"finish": "brass"}
purchase = ProductAction("purchase")
purchase.products = [product]
purchase.total_amount = 999.98
purchase.transaction_id = "T-1"
commerce = CommerceEvent(purchase)
commerce.currency_code = "USD"

promotion = Promotion()
promotion.id, promotion.name = "P-1", "Summer"
promo_event = CommerceEvent(promotion_action=PromotionAction("click", [promotion]))

impression = ProductImpression()
impression.product_impression_list, impression.products = "Search", [product]
impression_event = CommerceEvent(product_impressions=[impression])
cart = ShoppingCart()
cart.products = [product]
impression_event.shopping_cart = cart

screen = ScreenViewEvent(screen_name="Home", activity_type="MainActivity")
session_end = SessionEndEvent(session_duration_ms=60000)
transition = ApplicationStateTransitionEvent(application_transition_type="application_initialized")
transition.is_first_run = True
push_reg = PushRegistrationEvent(register=True, registration_token="token-1")
profile = ProfileEvent(profile_event_type="login")
opt_out = OptOutEvent(is_opted_out=False)
crumb = BreadcrumbEvent(label="tapped play", session_number=2)
push = PushMessageEvent(push_message_type="received", push_message_token="token-1",
                        message="hello", network="apn", application_state="background")
network = NetworkPerformanceEvent(http_verb="GET", url="https://example.com/a",
                                  time_elapsed=120, bytes_in=1024, bytes_out=12, response_code=200)
crash = CrashReportEvent(class_name="Boom", severity="error", message="it broke")
ua_change = UserAttributeChangeEvent(user_attribute_name="tier", new="gold", old="silver",
                                     deleted=False, is_new_attribute=False)

gdpr = GDPRConsentState(document="v1", consented=True, timestamp_unixtime_ms=ts, location="web",
                        hardware_id="hw-1")
ccpa = CCPAConsentState(document="v1", consented=False, timestamp_unixtime_ms=ts, location="web",
                        hardware_id="hw-1")
consent = ConsentState()
consent.gdpr = {"analytics": gdpr}
consent.ccpa = {"data_sale_opt_out": ccpa}
source_info = SourceInformation()
source_info.channel = "server_to_server"
app = ApplicationInformation()
app.application_name, app.application_version = "Jazz", "1.0"

single = batch("single-1", [SessionStartEvent(), custom, screen, commerce, FirstRunEvent()],
               consent_state=consent, source_info=source_info, application_info=app, mpid=-42)
bulk = [
    batch("bulk-1", [promo_event, impression_event, session_end, transition, push_reg, profile]),
    batch("bulk-2", [opt_out, crumb, push, network, crash, ua_change]),
]

events_api = api(secret)
sent = []
_, status, _ = events_api.upload_events_with_http_info(single)
assert status == 202, status
sent.append(events_api.api_client.sanitize_for_serialization(single))
_, status, _ = events_api.bulk_upload_events_with_http_info(bulk)
assert status == 202, status
sent.extend(events_api.api_client.sanitize_for_serialization(b) for b in bulk)

# A wrong secret is refused as mParticle refuses it, and the SDK reports it.
try:
    api("not-the-secret").upload_events(batch("refused", [SessionStartEvent()]))
    raise SystemExit("a wrong secret was accepted")
except ApiException as e:
    assert e.status == 403, e.status
    assert json.loads(e.body)["errors"][0]["code"] == "FORBIDDEN", e.body

types = sorted({e["event_type"] for b in sent for e in b["events"]})
with open(out, "w") as f:
    json.dump({"batches": sent, "event_types": types}, f)
print("sent", len(sent), "batches with event types", types)
