"""`python -m yardarm_datastore` runs one datastore replica until SIGTERM."""

from yardarm_datastore.app import create_service
from yardarm_datastore.settings import DatastoreSettings


def main() -> None:
    create_service(DatastoreSettings()).run()  # type: ignore[call-arg]  # port from env


if __name__ == "__main__":
    main()
