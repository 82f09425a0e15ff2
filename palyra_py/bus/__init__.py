"""The bus: "the journal's head is now N", told to every reader."""
