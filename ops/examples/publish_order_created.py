"""Publishes an order.v1 OrderCreated event as a checkout system written in Python would, with
pika, following the AMQP envelope in README.md ("The AMQP envelope"). The message service of the
tenant turns it into a system message in the customer's conversation.

Stubs first (from the repository root), then the event:

    python -m grpc_tools.protoc -Icontracts --python_out=/tmp/stubs order/v1/order.proto mesh/options.proto
    PYTHONPATH=/tmp/stubs python ops/examples/publish_order_created.py \
        --amqp amqp://guest:guest@127.0.0.1:5672/%2f --tenant mall \
        --order o-1001 --user alice --conversation c-alice --total-cents 4999 --currency EUR

Publishing the same --message-id twice is handled once (the id is the idempotency key). The
tenant must run order v1 (paipai runs v2: its exchange is mesh.paipai.order.v2).
"""

import argparse
import uuid

import pika

from order.v1 import order_pb2


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    args.add_argument("--tenant", required=True)
    args.add_argument("--order", required=True)
    args.add_argument("--user", required=True)
    # the message service puts the system message in this conversation; an event without one
    # is dead-lettered by the consumer ("an order event needs a conversation_id and a user")
    args.add_argument("--conversation", required=True)
    args.add_argument("--total-cents", type=int, default=0)
    args.add_argument("--currency", default="EUR")
    args.add_argument("--message-id", default=None, help="idempotency key (default: a new UUID)")
    a = args.parse_args()

    event = order_pb2.OrderCreated(
        order=order_pb2.OrderView(
            order_id=a.order,
            user_id=a.user,
            total_cents=a.total_cents,
            currency=a.currency,
        ),
        conversation_id=a.conversation,
    )
    connection = pika.BlockingConnection(pika.URLParameters(a.amqp))
    channel = connection.channel()
    channel.confirm_delivery()  # basic_publish raises unless the broker confirms
    channel.basic_publish(
        # one topic exchange per tenant, service and contract major
        exchange=f"mesh.{a.tenant}.order.v1",
        # the event's routing key: its name in snake_case
        routing_key="order_created",
        body=event.SerializeToString(),
        properties=pika.BasicProperties(
            message_id=a.message_id or str(uuid.uuid4()),
            content_type="application/x-protobuf",
            type="order.v1.OrderCreated",
            delivery_mode=2,  # persistent
            headers={
                "x-mesh-tenant": a.tenant,  # required: the tenant whose queue it is for
                "x-mesh-event": "OrderCreated",
                "x-mesh-contract": "order/v1@1.0.0",
            },
        ),
        mandatory=True,  # unroutable (no consumer queue bound yet) raises instead of vanishing
    )
    connection.close()
    print(f"published OrderCreated for order {a.order} to mesh.{a.tenant}.order.v1")


if __name__ == "__main__":
    main()
