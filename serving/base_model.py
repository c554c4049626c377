"""ServingModel: what the kserve.Model of every component (predictor, transformer, router) does
the same way: refusing new requests (503) once draining, a readable 400 for a request that does
not fit its schema, and a 404 for a route that names another model."""

from __future__ import annotations

import logging
from typing import TypeVar

import kserve
from pydantic import BaseModel, ValidationError

from serving.errors import ServiceUnavailable, check_model_name, invalid_input

Schema = TypeVar("Schema", bound=BaseModel)


class ServingModel(kserve.Model):
    # What a request refused while draining is told, with its 503.
    draining_reason = "the server is shutting down; retry on another replica"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.draining = False

    async def healthy(self) -> bool:
        return self.ready and not self.draining

    def start_draining(self) -> None:
        """Refuse new requests (503) from now on; those in flight go on."""
        if not self.draining:
            # The subclass's logger: the one its component's logging is configured for.
            logging.getLogger(type(self).__module__).info("draining: refusing new requests%s",
                                                          self.describe_in_flight())
        self.draining = True

    def describe_in_flight(self) -> str:
        """What the draining line says about the requests in flight, for a model that counts them."""
        return ""

    def check_admitting(self) -> None:
        """Raises ServiceUnavailable (503) for a request that comes while draining."""
        if self.draining:
            raise ServiceUnavailable(self.name, self.draining_reason)

    def check_model_name(self, name: str) -> None:
        """A route that names a model (in its path or body) names this one, or gets 404."""
        check_model_name(name, (self.name,))

    @staticmethod
    def validated(schema: type[Schema], payload: object) -> Schema:
        """The payload as `schema`; one that does not fit is the client's error (400), with a
        readable line per problem."""
        try:
            return schema.model_validate(payload)
        except ValidationError as exc:
            raise invalid_input(exc) from None
