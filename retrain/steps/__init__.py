"""The loop's steps: each takes a Context and a validated payload, does its work in one
transaction, and leaves its follow-up messages in the outbox. Workers wrap them in tasks;
the demo and tests call the same functions through those tasks."""
