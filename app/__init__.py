"""Pollinator: a self-hosted event poller for SaaS APIs."""
