"""The core model: the plasticity-term grammar and its vocabulary, the network, the
local rules and the recurrent net. Only these modules (and data) lie below the engine."""
