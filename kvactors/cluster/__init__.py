"""The cluster actors: MembershipManager, GossipProtocol, ResponsibilityManager."""
