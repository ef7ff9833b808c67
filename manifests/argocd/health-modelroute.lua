-- Argo CD health of a tokenomy.dev ModelRoute, from the conditions the operator writes.
-- Progressing until the operator has seen this generation; Degraded when the spec is
-- invalid or a backend's Service has no ready endpoint.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Tokenomy operator to reconcile the route"
  return hs
end
local generation = obj.metadata.generation or 0
if (obj.status.observedGeneration or 0) < generation then
  hs.status = "Progressing"
  hs.message = "The operator has not yet reconciled generation " .. generation
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.status == "False" then
    hs.status = "Degraded"
    hs.message = c.message
    return hs
  end
end
hs.status = "Healthy"
hs.message = "Valid, every backend resolved"
return hs
