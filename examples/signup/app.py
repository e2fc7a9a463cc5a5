"""A FastAPI app of your own that signs users up and sends each a welcome email, in one transaction.

    .venv/bin/uvicorn examples.signup.app:app --port 8001     # next to `make dev`

`POST /signups` inserts the user and enqueues the welcome email with the task object, in the
same database transaction: a signup that commits always gets its email (the job is in the
ledger the moment the user is), and one that rolls back (the address is taken: a unique
violation) never does — there is no job to run. The users table lives in the ledger's
database, which is what makes the one transaction possible.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, status
from pydantic import BaseModel, EmailStr
from sqlalchemy import DateTime, String, func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.settings import get_settings
from app.tasks.example import send_email

engine = create_async_engine(get_settings().database_url)
Sessions = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "signup_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Signup(BaseModel):
    email: EmailStr
    name: str


class SignedUp(BaseModel):
    user_id: int
    welcome_job: str


async def session() -> AsyncIterator[AsyncSession]:
    async with Sessions() as opened:
        yield opened  # whatever the route did not commit rolls back here


SessionDep = Annotated[AsyncSession, Depends(session)]


@asynccontextmanager
async def lifespan(application: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(title="Sign-ups", lifespan=lifespan)


@app.post("/signups", status_code=status.HTTP_201_CREATED)
async def signup(body: Signup, db: SessionDep) -> SignedUp:
    user = User(email=body.email)
    db.add(user)
    try:
        await db.flush()  # the INSERT: a taken address fails here
    except IntegrityError:
        await db.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"{body.email} has signed up already") from None
    welcome = {"to": body.email, "subject": "Welcome", "body": f"Hello {body.name}, welcome aboard."}
    job = await send_email.enqueue(welcome, session=db)  # the same transaction as the user
    await db.commit()  # both, or neither
    return SignedUp(user_id=user.id, welcome_job=str(job.id))
