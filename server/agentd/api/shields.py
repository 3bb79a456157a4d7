"""ShieldsService: the shields configured under `shields`, in configuration order."""

from __future__ import annotations

from agentd.config import Settings
from agentd.errors import NotFound
from agentd.v1 import shields_pb2 as pb
from agentd.v1 import shields_pb2_grpc


class ShieldsServicer(shields_pb2_grpc.ShieldsServiceServicer):
    def __init__(self, settings: Settings):
        # Built once: configuration does not change while the server runs.
        self._shields: dict[str, pb.Shield] = {}
        for shield in settings.shields:
            message = pb.Shield(identifier=shield.id, provider_id=shield.provider_id,
                                provider_resource_id=shield.provider_shield_id or shield.id)
            message.params.update(shield.params)
            self._shields[shield.id] = message

    async def ListShields(self, request, context):
        return pb.ListShieldsResponse(data=list(self._shields.values()))

    async def GetShield(self, request, context):
        shield = self._shields.get(request.identifier)
        if shield is None:
            raise NotFound("shield", request.identifier)
        return pb.GetShieldResponse(shield=shield)
