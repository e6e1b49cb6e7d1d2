"""Wire conformance with a client nobody here wrote: Python grpcio, stubs generated from
contracts/ by grpcio-tools' protoc. Run by services/node/tests/node/wire.rs against `mesh up`, at the
front door and directly at a worker: every method's success path, the error codes a caller can
meet (with their messages), and a chat end to end over a server stream.

    python conformance.py --stubs DIR --tenants DIR --front HOST:PORT --worker HOST:PORT

End users sign in as a business line's account system would let them: a JWT (HS256 here, with
the tenant file's development key), written by hand below so no Rust code is involved.
"""

import argparse
import queue
import sys
import threading
import time
import tomllib
import uuid

import grpc
import jwt

failures = []


def check(what, condition, detail=""):
    print(("ok   " if condition else "FAIL ") + what + (f": {detail}" if detail and not condition else ""))
    if not condition:
        failures.append(what)


def md(tenant, token):
    return (("x-mesh-tenant", tenant), ("x-mesh-token", token))


MALL = md("mall", "dev-mall-token")
PAIPAI = md("paipai", "dev-paipai-token")
TENANTS = "tenants"


def user_token(tenant, user, **claims):
    """A user token as the tenant's account system signs it, with a JWT library that is not
    ours (PyJWT): no `nbf`, no `iat` (both optional), `aud` a list holding the tenant's
    audience (the tenant id unless its file names one) beside another service's."""
    with open(f"{TENANTS}/{tenant}.toml", "rb") as f:
        users = tomllib.load(f)["users"]
    audience = users.get("audience", tenant)
    body = {"sub": user, "iss": users["issuer"], "aud": ["another-service", audience],
            "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, users["hs256_secret"], algorithm="HS256")


def user_md(tenant, user, **claims):
    return (("x-mesh-tenant", tenant), ("authorization", "Bearer " + user_token(tenant, user, **claims)))


def refused(call, request, metadata, code, message_part, what):
    try:
        call(request, metadata=metadata, timeout=5)
    except grpc.RpcError as e:
        check(
            what,
            e.code() == code and message_part in (e.details() or ""),
            f"got {e.code()} {e.details()!r}, want {code} containing {message_part!r}",
        )
        return
    check(what, False, "the call succeeded")


def run(target, run_id):
    from gateway.v1 import gateway_pb2, gateway_pb2_grpc
    from locator.v1 import locator_pb2, locator_pb2_grpc
    from message.v1 import message_pb2, message_pb2_grpc
    from order.v1 import order_pb2 as order1, order_pb2_grpc as order1_grpc
    from order.v2 import order_pb2 as order2, order_pb2_grpc as order2_grpc
    from push.v1 import push_pb2, push_pb2_grpc
    from recommend.v1 import recommend_pb2, recommend_pb2_grpc

    channel = grpc.insecure_channel(target)
    print(f"-- {target}")

    # health and reflection, as a load balancer and grpcurl ask them: no tenant metadata
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from google.protobuf.descriptor_pool import DescriptorPool

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "order.v1.Order", "message.v1.Message"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        check(f"health of {service or 'the server'!r} is SERVING", status == health_pb2.HealthCheckResponse.SERVING)
    refused(health.Check, health_pb2.HealthCheckRequest(service="nope.v1.Nope"), (),
            grpc.StatusCode.NOT_FOUND, "", "health of an unknown service is NOT_FOUND")
    reflected = ProtoReflectionDescriptorDatabase(channel)
    services = set(reflected.get_services())
    check("reflection lists the contract services",
          {"order.v1.Order", "message.v1.Message", "gateway.v1.Gateway"} <= services, str(services))
    methods = [m.name for m in DescriptorPool(reflected).FindServiceByName("order.v1.Order").methods]
    check("reflection describes calls, not events", methods == ["GetOrder", "ListOrders"], str(methods))

    recommend = recommend_pb2_grpc.RecommendStub(channel)
    orders1 = order1_grpc.OrderStub(channel)
    orders2 = order2_grpc.OrderStub(channel)
    messages = message_pb2_grpc.MessageStub(channel)
    locator = locator_pb2_grpc.LocatorStub(channel)
    gateway = gateway_pb2_grpc.GatewayStub(channel)
    push = push_pb2_grpc.PushStub(channel)

    # success paths
    suggested = recommend.Suggest(recommend_pb2.SuggestRequest(user_id="alice"), metadata=MALL, timeout=5)
    check("recommend.Suggest answers products", len(suggested.products) > 0, str(suggested))
    listed = orders1.ListOrders(order1.ListOrdersRequest(user_id="alice"), metadata=MALL, timeout=5)
    check("order.v1 ListOrders answers", listed.orders is not None)
    listed2 = orders2.ListOrders(order2.ListOrdersRequest(user_id="alice"), metadata=PAIPAI, timeout=5)
    check("order.v2 ListOrders answers for paipai", listed2.orders is not None)
    # the locator is the mesh's own: neither a backend nor a user may ask where a user is
    refused(locator.Locate, locator_pb2.LocateRequest(user_id="nobody"), MALL,
            grpc.StatusCode.PERMISSION_DENIED, "Locate", "locator.Locate is internal to the mesh")
    refused(locator.Locate, locator_pb2.LocateRequest(user_id="nobody"), user_md("mall", "mallory"),
            grpc.StatusCode.PERMISSION_DENIED, "Locate", "locator.Locate is internal, for users too")
    # a system message is the mesh's own too: no backend or user writes one as the platform
    notice = message_pb2.SendSystemRequest(to_user="bob", conversation_id="c-notice", body="x", key="k-1")
    refused(messages.SendSystem, notice, MALL,
            grpc.StatusCode.PERMISSION_DENIED, "SendSystem", "message.SendSystem is internal to the mesh")
    refused(messages.SendSystem, notice, user_md("mall", "mallory"),
            grpc.StatusCode.PERMISSION_DENIED, "SendSystem", "message.SendSystem is internal, for users too")

    # errors, each with its code and its message
    refused(orders1.GetOrder, order1.GetOrderRequest(order_id="missing"), MALL,
            grpc.StatusCode.NOT_FOUND, "missing", "GetOrder of an unknown order is NOT_FOUND")
    refused(orders1.GetOrder, order1.GetOrderRequest(order_id="o-1"), PAIPAI,
            grpc.StatusCode.FAILED_PRECONDITION, "runs order v2, not v1", "paipai's order v1 call is refused by its plan")
    refused(recommend.Suggest, recommend_pb2.SuggestRequest(), md("mall", "wrong-token"),
            grpc.StatusCode.UNAUTHENTICATED, "mall", "a wrong token is UNAUTHENTICATED")
    refused(recommend.Suggest, recommend_pb2.SuggestRequest(), (),
            grpc.StatusCode.UNAUTHENTICATED, "x-mesh-tenant", "no tenant is UNAUTHENTICATED")
    refused(recommend.Suggest, recommend_pb2.SuggestRequest(), md("nosuch", "whatever-token"),
            grpc.StatusCode.UNAUTHENTICATED, "the credential presented is not valid for tenant nosuch",
            "an unknown tenant is answered as a wrong credential")
    refused(recommend.Suggest, recommend_pb2.SuggestRequest(), md("mall", "whatever-token"),
            grpc.StatusCode.UNAUTHENTICATED, "the credential presented is not valid for tenant mall",
            "a wrong credential is answered alike")
    refused(recommend.Suggest, recommend_pb2.SuggestRequest(), user_md("mall", "alice", exp=int(time.time()) - 3600),
            grpc.StatusCode.UNAUTHENTICATED, "not valid for tenant mall", "an expired user token is UNAUTHENTICATED")
    refused(recommend.Suggest, recommend_pb2.SuggestRequest(), user_md("mall", "alice", aud="elsewhere"),
            grpc.StatusCode.UNAUTHENTICATED, "not valid for tenant mall", "a user token for another audience is UNAUTHENTICATED")
    refused(orders1.GetOrder, order1.GetOrderRequest(order_id=""), MALL,
            grpc.StatusCode.INVALID_ARGUMENT, "order_id", "an empty order id is INVALID_ARGUMENT")
    refused(orders1.GetOrder, order1.GetOrderRequest(order_id="x" * 5000), MALL,
            grpc.StatusCode.INVALID_ARGUMENT, "order_id", "an oversized order id is INVALID_ARGUMENT")
    refused(channel.unary_unary("/order.v1.Order/Nope"), b"", MALL,
            grpc.StatusCode.UNIMPLEMENTED, "has no method \"Nope\"", "an unknown method names the service's methods")
    send = messages.Send
    AGENT = user_md("mall", "agent")
    refused(send, message_pb2.SendRequest(conversation_id="c1", from_user="agent", to_user="b", body="x", client_msg_id="m"),
            MALL, grpc.StatusCode.PERMISSION_DENIED, "USER", "the backend credential cannot send as a user")
    refused(send, message_pb2.SendRequest(conversation_id="c1", from_user="bob", to_user="agent", body="x", client_msg_id="m"),
            AGENT, grpc.StatusCode.PERMISSION_DENIED, "acts only as its own user", "a user cannot send as another")
    refused(send, message_pb2.SendRequest(conversation_id="c 1", from_user="agent", to_user="b", body="x", client_msg_id="m"),
            AGENT, grpc.StatusCode.INVALID_ARGUMENT, "conversation_id", "a bad id is INVALID_ARGUMENT naming the field")
    refused(send, message_pb2.SendRequest(conversation_id="c1", from_user="agent", to_user="b", body="x"),
            AGENT, grpc.StatusCode.INVALID_ARGUMENT, "client_msg_id", "a missing client id is INVALID_ARGUMENT")
    first = message_pb2.SendRequest(conversation_id=f"c-{run_id}", to_user=f"bob{run_id}",
                                    body="one", client_msg_id="dup")
    stored = send(first, metadata=AGENT, timeout=5)
    check("a user's send is from the token's user", stored.message.from_user == "agent", str(stored))
    again = send(first, metadata=AGENT, timeout=5)
    check("a retried send answers the stored message", again.message.body == "one")
    other = message_pb2.SendRequest(conversation_id=f"c-{run_id}", from_user="agent", to_user=f"bob{run_id}",
                                    body="two", client_msg_id="dup")
    refused(send, other, AGENT, grpc.StatusCode.ALREADY_EXISTS, "dup", "a client id reused for another message is ALREADY_EXISTS")
    refused(push.Notify, push_pb2.NotifyRequest(user_id="bob", body="hi", notification_id="n1"), MALL,
            grpc.StatusCode.FAILED_PRECONDITION, "tenant mall does not run push", "a service the tenant does not run is refused by its plan")
    event_as_call = channel.unary_unary("/order.v1.Order/OrderCreated")
    refused(event_as_call, b"", MALL, grpc.StatusCode.UNIMPLEMENTED, "exchange mesh.mall.order.v1",
            "an event called as a call names its exchange")
    garbage = channel.unary_unary("/order.v1.Order/GetOrder")
    refused(garbage, b"\x08\xff\xff", MALL, grpc.StatusCode.INVALID_ARGUMENT, "GetOrderRequest",
            "an undecodable body is INVALID_ARGUMENT")

    # a chat end to end: a terminal attached over a server stream gets the message, acks it,
    # and has nothing left to sync
    user = f"carol{run_id}"
    CAROL = user_md("mall", user)
    refused(messages.FetchOffline, message_pb2.FetchOfflineRequest(user_id=user, terminal_id="phone"), AGENT,
            grpc.StatusCode.PERMISSION_DENIED, "acts only as its own user", "a user cannot read another's messages")
    stream = gateway.Attach(gateway_pb2.AttachRequest(user_id=user, terminal_id="phone"), metadata=CAROL)
    pushes = queue.Queue()

    def read():
        try:
            for push_msg in stream:
                pushes.put(push_msg)
        except grpc.RpcError:
            pass  # cancelled at the end

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def next_push(kind, within=10):
        """The next push of `kind` ("message", "heartbeat"), skipping the others."""
        deadline = time.time() + within
        while time.time() < deadline:
            try:
                p = pushes.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if p.WhichOneof("payload") == kind:
                return p
        return None

    # the attach is registered once its headers are in
    stream.initial_metadata()
    sent = send(message_pb2.SendRequest(conversation_id=f"chat-{run_id}", from_user="agent", to_user=user,
                                        body="hello from python", client_msg_id="m1"), metadata=AGENT, timeout=5)
    check("the attached terminal is delivered to", list(sent.delivered_terminals) == ["phone"], str(sent))
    got = next_push("message")
    check("the push arrives on the stream", got is not None and got.message.body == "hello from python", str(got))
    position = got.message.position if got else 0
    messages.AckDelivery(message_pb2.AckDeliveryRequest(user_id=user, terminal_id="phone", up_to_position=position),
                         metadata=CAROL, timeout=5)
    left = messages.FetchOffline(message_pb2.FetchOfflineRequest(terminal_id="phone"),
                                 metadata=CAROL, timeout=5)
    check("nothing left to sync after the ack", len(left.messages) == 0 and left.next_position == position, str(left))

    # the stream says where the truth is: a heartbeat with the timeline's head. A push this
    # client drops (as one lost to a paused node would be) is found from the head: the client
    # holds less, so it syncs from its cursor
    send(message_pb2.SendRequest(conversation_id=f"chat-{run_id}", from_user="agent", to_user=user,
                                 body="the one to drop", client_msg_id="m2"), metadata=AGENT, timeout=5)
    dropped = next_push("message")
    check("a second push arrives (and is dropped by this client)", dropped is not None)
    # (a heartbeat whose head was read before the second message was stored may come first)
    beat = next_push("heartbeat")
    while beat is not None and beat.heartbeat.head <= position:
        beat = next_push("heartbeat")
    check("a heartbeat carries the timeline's head and its interval",
          beat is not None and beat.heartbeat.head == position + 1 and beat.heartbeat.interval_ms > 0, str(beat))
    if beat is not None and beat.heartbeat.head > position:
        synced = messages.FetchOffline(message_pb2.FetchOfflineRequest(terminal_id="phone"),
                                       metadata=CAROL, timeout=5)
        check("a head above the cursor syncs what was missed",
              [m.body for m in synced.messages] == ["the one to drop"] and synced.next_position == beat.heartbeat.head,
              str(synced))
    stream.cancel()
    channel.close()


target_is_front = {}

if __name__ == "__main__":
    args = argparse.ArgumentParser()
    args.add_argument("--stubs", required=True)
    args.add_argument("--front", required=True)
    args.add_argument("--worker", required=True)
    args.add_argument("--tenants", required=True)
    a = args.parse_args()
    TENANTS = a.tenants
    sys.path.insert(0, a.stubs)
    target_is_front = {a.front: True, a.worker: False}
    for target in (a.front, a.worker):
        run(target, uuid.uuid4().hex[:8])
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}")
        sys.exit(1)
    print("all checks passed")
