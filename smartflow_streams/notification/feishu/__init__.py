"""Everything Feishu-specific in one room: webhook delivery and answer classification (:mod:`.provider`)."""
