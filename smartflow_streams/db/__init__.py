"""Database access: engine and sessions (:mod:`.engine`), tables (:mod:`.models`), schema upgrade (:mod:`.schema`)."""
