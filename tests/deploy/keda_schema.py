"""JSON schemas for the KEDA resources deploy/ uses, written from KEDA v2's documented API.

kubernetes-validate ships only the built-in kinds' schemas. These cover the fields of
``ScaledObject`` and ``TriggerAuthentication`` (keda.sh/v1alpha1) that a manifest may
set, closed with ``additionalProperties: false`` so a misspelt field fails, plus the
metadata keys of the two scalers used: Redis lists and RabbitMQ.
"""

from __future__ import annotations

from typing import Any

_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}

_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": _STRINGS,
        "annotations": _STRINGS,
    },
    "additionalProperties": False,
}

# https://keda.sh/docs/latest/scalers/redis-lists/ (parameters of the trigger itself; the
# authentication parameters may also come from a TriggerAuthentication).
REDIS_LIST_METADATA = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}
# https://keda.sh/docs/latest/scalers/rabbitmq-queue/
RABBITMQ_METADATA = {
    "host",
    "hostFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "protocol",
    "mode",
    "value",
    "activationValue",
    "queueName",
    "vhostName",
    "useRegex",
    "excludeUnacknowledged",
    "pageSize",
    "operation",
    "timeout",
    "unsafeSsl",
}

_TRIGGER = {
    "type": "object",
    "required": ["type", "metadata"],
    "properties": {
        "type": {"type": "string"},
        "name": {"type": "string"},
        "metadata": _STRINGS,
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
        "authenticationRef": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": _NAME,
                "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "redis"}}},
            "then": {
                "properties": {
                    "metadata": {
                        "required": ["listName"],
                        "propertyNames": {"enum": sorted(REDIS_LIST_METADATA)},
                        "properties": {
                            "listLength": {"pattern": r"^[1-9][0-9]*$"},
                            "databaseIndex": {"pattern": r"^[0-9]+$"},
                        },
                    }
                }
            },
        },
        {
            "if": {"properties": {"type": {"const": "rabbitmq"}}},
            "then": {
                "properties": {
                    "metadata": {
                        "required": ["queueName", "mode", "value"],
                        "propertyNames": {"enum": sorted(RABBITMQ_METADATA)},
                        "properties": {
                            "protocol": {"enum": ["auto", "http", "amqp"]},
                            "mode": {"enum": ["QueueLength", "MessageRate"]},
                            "value": {"pattern": r"^[0-9]+(\.[0-9]+)?$"},
                        },
                    }
                }
            },
        },
    ],
}

SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": _NAME,
                        "envSourceContainerName": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "pollingInterval": {**_INT32, "minimum": 1},
                "cooldownPeriod": _INT32,
                "initialCooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "maxReplicaCount": {**_INT32, "minimum": 1},
                "advanced": {"type": "object"},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                },
                "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

TRIGGER_AUTHENTICATION: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": _NAME,
                            "key": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                },
                "env": {"type": "array"},
                "configMapTargetRef": {"type": "array"},
                "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
                "boundServiceAccountToken": {"type": "array"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

SCHEMAS = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION}
