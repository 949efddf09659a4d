-- When the owner last gave the lease up (`release`, after its final snapshot). A process that
-- takes a lease released after the hand-over mark (handover_started_at, set at the previous
-- owner's SIGTERM) and soon after that mark is the next owner of a hand-over, and times it;
-- any other acquisition (a lease that ran out, a start long after the stop) clears the mark.

ALTER TABLE sessions ADD COLUMN lease_released_at timestamptz;
