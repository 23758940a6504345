"""`python -m yardarm_datastore` runs one datastore replica."""

from yardarm_datastore.app import create_service
from yardarm_datastore.settings import DatastoreSettings


def main() -> None:
    create_service(DatastoreSettings()).run()  # type: ignore[call-arg]


if __name__ == "__main__":
    main()
