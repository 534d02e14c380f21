"""Write the embedded Stage 1 fixtures: one small file per hub dataset, in that dataset's column schema and format.

    python scripts/make_stage1_fixtures.py [--out data/fixtures/stage1]

The rows are written for this project (finance content; Korean for Won-Instruct). Each file mirrors the hub
repo's own file (name, format, columns; see kospi_ft.data.hfdata.REGISTRY) and carries a few deliberately bad rows
of the kinds the real data has: null / empty / whitespace-only turns, exact and whitespace-variant duplicates,
and one over-long conversation, so the stage's drop counting runs on every fixture. The output is deterministic
(no randomness, fixed row order); the files are committed, this script only documents and regenerates them.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# ---------------------------------------------------------------------------------------------------------------
# Josephgflowers/Finance-Instruct-500k: train.json (JSON lines), columns system / user / assistant.
# The real set leaves `system` empty on many rows, so about half of these do too.
# ---------------------------------------------------------------------------------------------------------------
FI_SYSTEMS = (
    "",
    "You are a financial analyst. Answer precisely and show the key steps.",
    "",
    "You are a helpful assistant with expertise in corporate finance and investing.",
)

FI_CONCEPTS = (
    ("What is the difference between a stock's market capitalization and its enterprise value?",
     "Market capitalization is share price times shares outstanding: the value of the equity only. Enterprise "
     "value adds net debt (total debt minus cash) and minority interests to market capitalization, so it "
     "measures the value of the whole operating business regardless of how it is financed."),
    ("Why do bond prices fall when interest rates rise?",
     "A bond's coupons are fixed. When market rates rise, new bonds pay more, so existing bonds must trade at a "
     "lower price for their yield to match the market. The longer the duration, the larger the price drop for "
     "the same change in rates."),
    ("Explain what a price-to-book ratio below 1 may indicate.",
     "A P/B below 1 means the market values the company at less than the book value of its equity. It can signal "
     "undervaluation, but it often reflects expected losses, low return on equity, or assets whose book value "
     "overstates what they could be sold for, as is common for banks and cyclical industrials."),
    ("What does a company's free cash flow measure?",
     "Free cash flow is operating cash flow minus capital expenditures. It is the cash the business generates "
     "after maintaining and expanding its asset base, available for dividends, buybacks, debt repayment or "
     "acquisitions."),
    ("How does diversification reduce portfolio risk?",
     "Combining assets whose returns are not perfectly correlated lowers the portfolio's volatility below the "
     "weighted average of the individual volatilities. It removes company-specific risk but not market-wide "
     "(systematic) risk."),
    ("What is a stop-loss order and what is its main drawback?",
     "A stop-loss order sells a position once the price falls to a set level, capping the loss on a trade. Its "
     "drawback is that in a gap down or a fast market the order fills at the next available price, which can be "
     "well below the stop level."),
    ("Define the Sharpe ratio.",
     "The Sharpe ratio is the portfolio's excess return over the risk-free rate divided by the standard deviation "
     "of its returns. It measures return per unit of total risk; higher is better when comparing strategies."),
    ("What is maximum drawdown?",
     "Maximum drawdown is the largest peak-to-trough decline in a portfolio's value over a period, expressed as a "
     "percentage of the peak. It shows the worst loss an investor would have suffered buying at a high."),
    ("Why might a central bank raise its policy rate?",
     "To cool inflation. A higher policy rate raises borrowing costs, slows credit growth and demand, and "
     "usually strengthens the currency, which together reduce price pressure."),
    ("What is the difference between systematic and unsystematic risk?",
     "Systematic risk affects the whole market (rates, recessions, geopolitics) and cannot be diversified away. "
     "Unsystematic risk is specific to one company or industry and can be reduced by holding many assets."),
    ("What is a covered call strategy?",
     "Holding a stock and selling a call option on it. The premium adds income and a small cushion against "
     "declines, but the upside above the strike price is given up."),
    ("How do rising foreign net purchases usually affect an emerging equity market?",
     "Sustained foreign net buying adds demand for large, liquid stocks and often supports the local currency. "
     "It tends to lift index heavyweights first; reversals of these flows are a common source of volatility."),
    ("What is the purpose of a moving average in technical analysis?",
     "A moving average smooths daily price noise to show the trend. Price above a rising average suggests an "
     "uptrend; crossovers of a short and a long average are used as trend-change signals."),
    ("Explain position sizing with a fixed fractional rule.",
     "Risk a fixed fraction of equity per trade, for example 1%. The position size is that risk amount divided "
     "by the distance between the entry and the stop-loss price, so wider stops mean smaller positions."),
    ("What is the current ratio and what does it tell an analyst?",
     "Current assets divided by current liabilities. A ratio above 1 means short-term assets cover short-term "
     "obligations; a very low ratio signals liquidity risk, a very high one may mean idle capital."),
    ("What is dollar-cost averaging?",
     "Investing a fixed amount at regular intervals regardless of price. More shares are bought when prices are "
     "low and fewer when high, which reduces the risk of investing a lump sum at a peak."),
    ("What does leverage do to the returns of a portfolio?",
     "Leverage multiplies both gains and losses. With 2x leverage a 10% market move becomes roughly a 20% move in "
     "equity, before borrowing costs, and large drawdowns can force liquidation."),
    ("Why do value stocks and growth stocks react differently to interest rates?",
     "Growth stocks derive more of their value from cash flows far in the future, so a higher discount rate "
     "cuts their present value more. Value stocks earn more of their value sooner and are less rate-sensitive."),
    ("What is a dividend payout ratio?",
     "Dividends per share divided by earnings per share. It shows what share of profits is returned to "
     "shareholders; a ratio above 100% cannot be sustained without drawing on reserves or debt."),
    ("What is market breadth?",
     "Market breadth compares the number of advancing and declining stocks. A rally led by few large stocks with "
     "weak breadth is considered less robust than one in which most stocks rise."),
)


def _fi_calculations() -> list[tuple[str, str]]:
    """Worked calculations with exact answers: the arithmetic is done here, so every answer is right."""
    rows = []
    for price, eps in ((72000, 4800), (45500, 3250), (128000, 6400), (9800, 700), (310000, 15500), (56000, 8000)):
        rows.append((f"A stock trades at {price:,} KRW and its trailing earnings per share are {eps:,} KRW. "
                     f"What is its P/E ratio?",
                     f"P/E = price / EPS = {price:,} / {eps:,} = {price / eps:.2f}."))
    for price, dps in ((50000, 1500), (82000, 2460), (12500, 625), (64000, 1280), (250000, 5000)):
        rows.append((f"What is the dividend yield of a share priced at {price:,} KRW paying an annual dividend of "
                     f"{dps:,} KRW?",
                     f"Dividend yield = {dps:,} / {price:,} = {dps / price * 100:.2f}%."))
    for start, end, years in ((1000, 1610.51, 5), (2000, 2420, 2), (500, 665.5, 3), (1500, 2196.15, 4)):
        cagr = (end / start) ** (1 / years) - 1
        rows.append((f"An investment grew from {start:,} to {end:,} in {years} years. What was its compound annual "
                     f"growth rate?",
                     f"CAGR = ({end:,} / {start:,})^(1/{years}) - 1 = {cagr * 100:.2f}% per year."))
    for principal, rate, years in ((10_000_000, 4, 3), (5_000_000, 3, 5), (20_000_000, 5, 2), (1_000_000, 6, 10)):
        final = principal * (1 + rate / 100) ** years
        rows.append((f"How much will {principal:,} KRW grow to in {years} years at {rate}% compounded annually?",
                     f"Future value = {principal:,} x (1 + {rate / 100:.2f})^{years} = {final:,.0f} KRW."))
    for debt, equity in ((300, 600), (450, 300), (120, 800), (900, 900)):
        rows.append((f"A company has total debt of {debt} billion KRW and shareholders' equity of {equity} billion "
                     f"KRW. What is its debt-to-equity ratio?",
                     f"Debt-to-equity = {debt} / {equity} = {debt / equity:.2f}."))
    for coupon, price in ((50, 980), (35, 1020), (42, 950), (60, 1100)):
        rows.append((f"A bond with a face value of 1,000 pays an annual coupon of {coupon}. It trades at {price}. "
                     f"What is its current yield?",
                     f"Current yield = annual coupon / price = {coupon} / {price} = {coupon / price * 100:.2f}%."))
    for equity, risk_pct, entry, stop in ((100_000_000, 1, 50000, 47500), (30_000_000, 2, 82000, 79950)):
        risk = equity * risk_pct / 100
        shares = int(risk // (entry - stop))
        rows.append((f"With equity of {equity:,} KRW, a rule of risking {risk_pct}% per trade, an entry at "
                     f"{entry:,} KRW and a stop-loss at {stop:,} KRW, how many shares should be bought?",
                     f"Risk amount = {risk:,.0f} KRW; risk per share = {entry - stop:,} KRW; shares = "
                     f"{risk:,.0f} / {entry - stop:,} = {shares:,}."))
    return rows


def _fi_long_row() -> tuple[str, str]:
    """An amortisation schedule long enough to exceed the embedded max_seq_length (counted, not truncated)."""
    principal, annual, months = 120_000_000, 0.048, 36
    r = annual / 12
    payment = principal * r / (1 - (1 + r) ** -months)
    lines = [f"Monthly payment = {payment:,.0f} KRW. Schedule (month: interest / principal / balance):"]
    balance = principal
    for m in range(1, months + 1):
        interest = balance * r
        balance -= payment - interest
        lines.append(f"Month {m}: {interest:,.0f} / {payment - interest:,.0f} / {max(balance, 0):,.0f}")
    return (f"Build the full amortisation schedule for a {principal:,} KRW loan at {annual * 100:.1f}% annual "
            f"interest repaid monthly over {months} months.", "\n".join(lines))


def finance_instruct_rows() -> list[dict]:
    pairs = list(FI_CONCEPTS) + _fi_calculations()
    rows = [{"system": FI_SYSTEMS[i % len(FI_SYSTEMS)], "user": q, "assistant": a} for i, (q, a) in enumerate(pairs)]
    long_q, long_a = _fi_long_row()
    rows.insert(7, {"system": "", "user": long_q, "assistant": long_a})
    bad = [
        {"system": "", "user": "What is a bear market?", "assistant": ""},                       # empty
        {"system": "", "user": "   \n\t ", "assistant": "A decline of 20% or more from a recent peak."},  # blank
        {"system": "", "user": "What is beta?", "assistant": None},                                # null
        {"system": None, "user": None, "assistant": "Beta measures sensitivity to the market."},    # null
        dict(rows[3]),                                                                              # exact dup
        {"system": "You are a financial analyst.",                                                 # dup modulo
         "user": "  " + rows[10]["user"].replace(" ", "  ", 3) + " ", "assistant": rows[10]["assistant"]},  # spaces
    ]
    for k, row in enumerate(bad):
        rows.insert(5 + 9 * k, row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# sujet-ai/Sujet-Finance-Instruct-177k: Sujet-Finance-Instruct-177k.csv, columns inputs / answer / system_prompt /
# user_prompt / Unnamed: 0 (a pandas index that was saved as a column) / task_type / dataset.
# ---------------------------------------------------------------------------------------------------------------
SUJET_SYSTEM = {
    "sentiment_analysis": "You are a financial sentiment analysis expert. Classify the sentiment of the text as "
                          "positive, negative or neutral. Answer with one word.",
    "qa": "",   # the plain QA rows come without a task system prompt
    "qa_with_context": "You are a financial analyst. Answer the question using only the context given.",
    "yes_no_question": "Answer the financial question with Yes or No.",
    "topic_classification": "Classify the financial news headline into one topic: Earnings, M&A, Macro, Markets, "
                            "Regulation, Company News.",
}

SUJET_ROWS = (
    ("sentiment_analysis", "financial_phrasebank",
     "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.", "positive"),
    ("sentiment_analysis", "financial_phrasebank",
     "The company expects its net sales for the full year to remain at the previous year's level.", "neutral"),
    ("sentiment_analysis", "zeroshot/twitter-financial-news-sentiment",
     "Chipmaker shares slide after the company cuts its quarterly revenue guidance.", "negative"),
    ("sentiment_analysis", "zeroshot/twitter-financial-news-sentiment",
     "Battery maker wins a multi-year supply deal with a European automaker.", "positive"),
    ("sentiment_analysis", "financial_phrasebank",
     "Pre-tax loss totalled EUR 2.2 mn, compared to a profit of EUR 1.5 mn a year earlier.", "negative"),
    ("sentiment_analysis", "zeroshot/twitter-financial-news-sentiment",
     "Shipping stocks flat as freight rates hold steady for a third week.", "neutral"),
    ("sentiment_analysis", "financial_phrasebank",
     "The board proposes a dividend of EUR 0.50 per share, up from EUR 0.40.", "positive"),
    ("sentiment_analysis", "zeroshot/twitter-financial-news-sentiment",
     "Retailer misses same-store sales estimates as holiday demand fades.", "negative"),
    ("qa", "gbharti/finance-alpaca",
     "What is the difference between a Roth IRA and a traditional IRA?",
     "Contributions to a traditional IRA may be tax-deductible and withdrawals are taxed as income. Roth "
     "contributions are made after tax, and qualified withdrawals in retirement are tax-free."),
    ("qa", "gbharti/finance-alpaca",
     "Is it better to pay off a credit card balance or invest the money?",
     "Usually pay off the card first: card interest of 18-25% is a guaranteed cost, far above the expected "
     "return of most investments. Keep a small emergency fund, then invest."),
    ("qa", "ceadar-ie/FinTalk-19k",
     "How are exchange-traded funds taxed compared with mutual funds?",
     "ETFs are usually more tax-efficient: in-kind creations and redemptions let them avoid realising capital "
     "gains inside the fund, so fewer capital gains distributions reach shareholders."),
    ("qa", "gbharti/finance-alpaca",
     "What does it mean when a stock goes ex-dividend?",
     "On the ex-dividend date the share starts trading without the right to the next dividend. Buyers on or "
     "after that date do not receive it, and the price typically drops by about the dividend amount."),
    ("qa", "ceadar-ie/FinTalk-19k",
     "Why do companies buy back their own shares?",
     "Buybacks return cash to shareholders and reduce the share count, raising earnings per share. Companies use "
     "them when they see the shares as undervalued or lack better investment opportunities."),
    ("qa", "gbharti/finance-alpaca",
     "What is an emergency fund and how large should it be?",
     "Cash set aside for unexpected expenses or loss of income, commonly three to six months of essential "
     "spending, kept in a safe and liquid account."),
    ("qa_with_context", "dylanalloy/ehc-contrived-financial",
     "Context: Revenue was 4.2 trillion KRW, up 12% year on year, while operating margin fell from 9.1% to 7.4% "
     "on higher raw material costs.\nQuestion: Did profitability improve?",
     "No. Revenue grew 12%, but operating margin fell from 9.1% to 7.4%, so profitability weakened."),
    ("qa_with_context", "dylanalloy/ehc-contrived-financial",
     "Context: The fund returned 8.4% last year against a benchmark return of 10.1%, with lower volatility.\n"
     "Question: Did the fund outperform its benchmark?",
     "No. It returned 8.4% versus 10.1% for the benchmark, underperforming by 1.7 percentage points, although "
     "with lower volatility."),
    ("qa_with_context", "dylanalloy/ehc-contrived-financial",
     "Context: Net debt fell from 2.0 trillion KRW to 1.2 trillion KRW after the sale of the logistics unit.\n"
     "Question: By how much did net debt decrease?",
     "Net debt decreased by 0.8 trillion KRW, from 2.0 to 1.2 trillion KRW."),
    ("qa_with_context", "dylanalloy/ehc-contrived-financial",
     "Context: Inventory days rose from 45 to 63 while sales growth slowed to 2%.\nQuestion: What does this "
     "suggest?",
     "Inventory is building faster than sales, which suggests weakening demand and a risk of future markdowns "
     "or write-downs."),
    ("yes_no_question", "AdaptLLM/finance-tasks_Headline",
     "Headline: Gold futures climb to a record as the dollar weakens.\nDoes the news headline talk about price "
     "going up?", "Yes"),
    ("yes_no_question", "AdaptLLM/finance-tasks_Headline",
     "Headline: Gold prices retreat as Treasury yields jump.\nDoes the news headline talk about price going up?",
     "No"),
    ("yes_no_question", "AdaptLLM/finance-tasks_Headline",
     "Headline: Gold steady ahead of the central bank decision.\nDoes the news headline talk about a future "
     "event?", "Yes"),
    ("yes_no_question", "AdaptLLM/finance-tasks_Headline",
     "Headline: Gold slips for a second session.\nDoes the news headline compare gold with any other asset?",
     "No"),
    ("topic_classification", "zeroshot/twitter-financial-news-topic",
     "Automaker agrees to acquire a battery start-up for 1.1 billion dollars.", "M&A"),
    ("topic_classification", "zeroshot/twitter-financial-news-topic",
     "Consumer prices rose 3.1% in October, above economists' forecasts.", "Macro"),
    ("topic_classification", "zeroshot/twitter-financial-news-topic",
     "Chipmaker reports record quarterly profit on server demand.", "Earnings"),
    ("topic_classification", "zeroshot/twitter-financial-news-topic",
     "Regulator proposes new disclosure rules for short selling.", "Regulation"),
    ("topic_classification", "zeroshot/twitter-financial-news-topic",
     "Stocks close higher as technology shares rebound.", "Markets"),
    ("topic_classification", "zeroshot/twitter-financial-news-topic",
     "Airline names a new chief financial officer.", "Company News"),
    ("qa", "gbharti/finance-alpaca",
     "What is the difference between a market order and a limit order?",
     "A market order executes immediately at the best available price. A limit order executes only at the limit "
     "price or better, so the price is controlled but the fill is not guaranteed."),
    ("qa", "ceadar-ie/FinTalk-19k",
     "What is a bond ladder?",
     "A portfolio of bonds with staggered maturities. As each bond matures the money is reinvested at the long "
     "end, which smooths interest-rate risk and provides regular liquidity."),
    ("qa", "gbharti/finance-alpaca",
     "Should I invest in individual stocks or index funds?",
     "For most investors index funds are the better core holding: broad diversification at low cost. Individual "
     "stocks add company risk and need research; keep them to a small share if you want them."),
    ("qa", "ceadar-ie/FinTalk-19k",
     "What is the yield curve and why do investors watch it?",
     "The yield curve plots government bond yields across maturities. An inverted curve, with short yields above "
     "long yields, has often preceded recessions."),
    ("sentiment_analysis", "financial_phrasebank",
     "Net sales decreased by 4.3% to EUR 96.4 mn.", "negative"),
    ("sentiment_analysis", "zeroshot/twitter-financial-news-sentiment",
     "Bank shares rally after stress test results beat expectations.", "positive"),
)


def sujet_rows() -> list[dict]:
    rows = []
    for i, (task, source, user, answer) in enumerate(SUJET_ROWS):
        system = SUJET_SYSTEM[task]
        inputs = f"{system}\n\n{user}" if system else user
        rows.append({"inputs": inputs, "answer": answer, "system_prompt": system, "user_prompt": user,
                     "Unnamed: 0": i, "task_type": task, "dataset": source})
    bad = [
        {"inputs": "What is a margin call?", "answer": "", "system_prompt": "",               # empty answer
         "user_prompt": "What is a margin call?", "task_type": "qa", "dataset": "gbharti/finance-alpaca"},
        {"inputs": " ", "answer": "neutral", "system_prompt": SUJET_SYSTEM["sentiment_analysis"],  # blank prompt
         "user_prompt": "   ", "task_type": "sentiment_analysis", "dataset": "financial_phrasebank"},
        dict(rows[8]),                                                                        # exact duplicate
        {**rows[2], "answer": "Negative"},                                                    # duplicate modulo case
    ]
    for k, row in enumerate(bad):
        row["Unnamed: 0"] = len(SUJET_ROWS) + k
        rows.insert(4 + 8 * k, row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# KRX-Data/Won-Instruct: data/train-*.parquet, columns prompt / original_response plus four model-response columns.
# Korean financial instructions; only prompt and original_response are used.
# ---------------------------------------------------------------------------------------------------------------
WON_QA = (
    ("코스피(KOSPI)와 코스닥(KOSDAQ) 시장의 차이를 설명하세요.",
     "코스피는 한국거래소의 유가증권시장으로 대형 우량 기업이 주로 상장되어 있습니다. 코스닥은 기술·성장 기업 중심의 "
     "시장으로 상장 요건이 상대적으로 완화되어 있고 변동성이 더 큰 편입니다."),
    ("PER이 낮은 주식이 항상 저평가된 것은 아닌 이유는 무엇인가요?",
     "PER이 낮은 것은 시장이 향후 이익 감소나 높은 위험을 예상하기 때문일 수 있습니다. 일회성 이익으로 EPS가 일시적으로 "
     "커진 경우에도 PER이 낮게 보이므로, 이익의 지속성과 업종 특성을 함께 봐야 합니다."),
    ("외국인 순매수가 코스피 지수에 미치는 영향을 설명하세요.",
     "외국인 투자자는 시가총액 상위 대형주 비중이 높아 순매수가 이어지면 지수 상승을 이끄는 경향이 있습니다. 또한 원화 "
     "강세 요인이 되며, 반대로 대규모 순매도는 지수 하락과 변동성 확대로 이어질 수 있습니다."),
    ("공매도가 주식시장에서 하는 역할은 무엇인가요?",
     "공매도는 고평가된 주식의 가격 발견을 돕고 시장 유동성을 높입니다. 다만 하락장에서 매도 압력을 키울 수 있어 "
     "규제 당국이 한시적으로 금지하거나 제도를 보완하기도 합니다."),
    ("배당락일이란 무엇이며 주가에 어떤 영향을 주나요?",
     "배당락일은 그날 이후 주식을 사면 해당 배당을 받을 권리가 없어지는 날입니다. 이론적으로 배당금만큼 주가가 "
     "하락한 상태로 거래가 시작됩니다."),
    ("ROE(자기자본이익률)를 해석할 때 주의할 점은 무엇인가요?",
     "ROE는 순이익을 자기자본으로 나눈 값으로 높을수록 자본을 효율적으로 쓴다는 뜻입니다. 그러나 부채를 늘려도 "
     "ROE가 높아지므로 부채비율과 함께 봐야 하며, 일회성 이익 여부도 확인해야 합니다."),
    ("기준금리 인상이 성장주와 가치주에 미치는 영향을 비교하세요.",
     "성장주는 먼 미래의 현금흐름 비중이 커서 할인율 상승의 영향을 크게 받아 금리 인상기에 상대적으로 약세를 보입니다. "
     "가치주는 현재 이익 비중이 커서 영향이 상대적으로 작습니다."),
    ("손절매(스톱로스) 원칙을 지켜야 하는 이유는 무엇인가요?",
     "손실을 미리 정한 범위로 제한해 한 번의 큰 손실로 계좌가 회복 불가능해지는 것을 막기 위해서입니다. 감정적 판단을 "
     "배제하고 위험을 일정하게 관리할 수 있습니다."),
    ("시장 폭(breadth)이 약한 상승장은 왜 위험 신호로 보나요?",
     "지수가 오르더라도 소수 대형주만 상승하고 대부분 종목이 하락하면 상승의 기반이 좁다는 뜻입니다. 주도주가 꺾이면 "
     "지수가 빠르게 하락할 수 있어 추세 약화 신호로 해석합니다."),
    ("변동성이 커지는 국면에서 포지션 규모를 줄여야 하는 이유를 설명하세요.",
     "같은 금액이라도 변동성이 크면 손실 폭이 커집니다. 위험을 일정하게 유지하려면 변동성에 반비례해 포지션을 줄여야 "
     "하며, 이는 최대 낙폭을 관리하는 기본 원칙입니다."),
    ("PBR이 1보다 낮은 은행주가 많은 이유는 무엇인가요?",
     "은행은 자기자본이익률이 자본비용보다 낮다고 평가되거나 대손 위험, 규제로 인한 배당 제약이 반영되어 장부가치보다 "
     "낮게 거래되는 경우가 많습니다."),
    ("환율 상승(원화 약세)이 수출 기업 실적에 미치는 영향은?",
     "원화 약세는 달러로 받은 매출을 원화로 환산할 때 금액을 키워 수출 기업의 매출과 이익에 유리합니다. 다만 원자재를 "
     "수입하는 기업은 원가 부담이 커질 수 있습니다."),
    ("이동평균선 골든크로스의 의미와 한계를 설명하세요.",
     "단기 이동평균선이 장기 이동평균선을 상향 돌파하는 것으로 상승 추세 전환 신호로 봅니다. 그러나 후행 지표라 신호가 "
     "늦고, 횡보장에서는 잦은 거짓 신호가 발생합니다."),
    ("분산투자가 위험을 줄이는 원리를 설명하세요.",
     "상관관계가 낮은 자산을 함께 보유하면 한 자산의 손실을 다른 자산이 상쇄해 전체 변동성이 줄어듭니다. 다만 시장 전체의 "
     "체계적 위험은 분산으로 제거할 수 없습니다."),
)


def _won_calculations() -> list[tuple[str, str]]:
    rows = []
    for price, eps in ((70000, 5000), (48000, 4000), (150000, 7500), (21000, 1400)):
        rows.append((f"주가가 {price:,}원이고 주당순이익(EPS)이 {eps:,}원인 기업의 PER을 계산하세요.",
                     f"PER = 주가 / EPS = {price:,} / {eps:,} = {price / eps:.1f}배입니다."))
    for price, dps in ((60000, 1800), (35000, 1400), (90000, 2700)):
        rows.append((f"주가 {price:,}원, 주당 배당금 {dps:,}원일 때 배당수익률은 얼마인가요?",
                     f"배당수익률 = {dps:,} / {price:,} = {dps / price * 100:.1f}%입니다."))
    for principal, rate, years in ((10_000_000, 5, 3), (3_000_000, 4, 5), (50_000_000, 3, 2)):
        final = principal * (1 + rate / 100) ** years
        rows.append((f"{principal:,}원을 연 {rate}% 복리로 {years}년 투자하면 얼마가 되나요?",
                     f"{principal:,} × (1 + {rate / 100:.2f})^{years} = 약 {final:,.0f}원입니다."))
    for equity, assets in ((400, 1000), (250, 1000), (600, 1500)):
        debt = assets - equity
        rows.append((f"자산총계 {assets:,}억원, 자본총계 {equity:,}억원인 기업의 부채비율은?",
                     f"부채 = {assets:,} - {equity:,} = {debt:,}억원, 부채비율 = {debt:,} / {equity:,} × 100 = "
                     f"{debt / equity * 100:.0f}%입니다."))
    return rows


WON_MODEL_COLUMNS = ("Qwen/Qwen2.5-1.5B-Instruct_response", "Qwen/Qwen2.5-7B-Instruct_response",
                     "google/gemma-2-2b-it_response", "google/gemma-2-9b-it_response")


def won_rows() -> list[dict]:
    pairs = list(WON_QA) + _won_calculations()
    rows = []
    for i, (q, a) in enumerate(pairs):
        row = {"prompt": q, "original_response": a}
        for j, col in enumerate(WON_MODEL_COLUMNS):
            # The model-response columns are other models' answers, unused here; some are missing in practice.
            row[col] = None if (i + j) % 3 == 0 else a.split(". ")[0] + "."
        rows.append(row)
    bad = [
        {"prompt": "", "original_response": "코스피200은 유가증권시장 대표 200종목으로 구성된 지수입니다."},  # empty
        {"prompt": "VKOSPI 지수란 무엇인가요?", "original_response": None},                              # null
        {"prompt": "증거금률이란?", "original_response": " \n "},                                         # blank
        dict(rows[4]),                                                                                    # dup
    ]
    for k, row in enumerate(bad):
        for col in WON_MODEL_COLUMNS:
            row.setdefault(col, None)
        rows.insert(3 + 7 * k, row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# darkknight25/trading_dataset_v2: llm_trading_dataset_20250629_115817.jsonl, columns instruction / input / output.
# One instruction string, indicator snapshots as input, "Buy"/"Sell" as output; the real file repeats rows.
# ---------------------------------------------------------------------------------------------------------------
TRADING_INSTRUCTION = "Given technical indicators, predict if it's a Buy or Sell signal."


def trading_rows() -> list[dict]:
    rows = []
    days = ["2024-09-02", "2024-09-03", "2024-09-04", "2024-09-05", "2024-09-06", "2024-09-09", "2024-09-10",
            "2024-09-11", "2024-09-12", "2024-09-13", "2024-09-16", "2024-09-17", "2024-09-18", "2024-09-19",
            "2024-09-20", "2024-09-23"]
    ema20, ema50 = 221.40, 218.75
    for i, day in enumerate(days):
        # A smooth deterministic path: the first half trends up, the second half rolls over.
        drift = 0.45 if i < 8 else -0.55
        ema20 = round(ema20 + drift, 2)
        ema50 = round(ema50 + drift * 0.4, 2)
        macd = round((ema20 - ema50) * 0.62, 2)
        signal = round(macd - (0.18 if i < 8 else -0.21), 2)
        rsi = round(50 + (ema20 - ema50) * 3.1, 2)
        cci = round((ema20 - ema50) * 41.0 - 60, 2)
        stoch_k = round(min(99.0, max(1.0, 50 + drift * 70 + i)), 2)
        stoch_d = round(stoch_k - 4.5, 2)
        text = (f"AAPL on {day} with indicators: EMA20={ema20}, EMA50={ema50}, BB_upper={round(ema20 + 6.3, 2)}, "
                f"BB_lower={round(ema20 - 6.1, 2)}, MACD={macd}, MACD_signal={signal}, RSI={rsi}, CCI={cci}, "
                f"STOCH_K={stoch_k}, STOCH_D={stoch_d}")
        rows.append({"instruction": TRADING_INSTRUCTION, "input": text, "output": "Buy" if macd > signal else "Sell"})
    for k, src in enumerate((2, 9, 9)):   # exact repeats, as in the real file
        rows.insert(5 + 5 * k, dict(rows[src]))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# FinGPT/fingpt-sentiment-train: data/train-*.parquet, columns input / output / instruction.
# ---------------------------------------------------------------------------------------------------------------
FINGPT_NEWS = "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}."
FINGPT_TWEET = "What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}."
FINGPT_FINE = ("What is the sentiment of this news? Please choose an answer from {strong negative/moderately "
               "negative/mildly negative/neutral/mildly positive/moderately positive/strong positive}.")

FINGPT_ROWS = (
    ("Samsung Electronics posts its highest quarterly operating profit in two years on memory chip prices.",
     "positive", FINGPT_NEWS),
    ("Hyundai Motor recalls 80,000 vehicles over a faulty fuel pump.", "negative", FINGPT_NEWS),
    ("SK Hynix to hold its annual shareholders' meeting on March 27.", "neutral", FINGPT_NEWS),
    ("$KOSPI bounces 1.2% as foreign investors return to chip stocks", "positive", FINGPT_TWEET),
    ("Korean won slides to a 15-year low against the dollar, exporters mixed", "negative", FINGPT_TWEET),
    ("LG Energy Solution shares unchanged ahead of earnings", "neutral", FINGPT_TWEET),
    ("Naver's cloud revenue rises 18% but advertising growth slows.", "mildly positive", FINGPT_FINE),
    ("POSCO Holdings cuts its lithium output target as prices slump.", "moderately negative", FINGPT_FINE),
    ("Kakao faces a regulatory probe into alleged market manipulation.", "strong negative", FINGPT_FINE),
    ("Celltrion wins approval for a biosimilar in Europe.", "moderately positive", FINGPT_FINE),
    ("Shipbuilders extend their rally on a wave of LNG carrier orders.", "positive", FINGPT_NEWS),
    ("KB Financial keeps its dividend unchanged.", "neutral", FINGPT_NEWS),
)


def fingpt_rows() -> list[dict]:
    rows = [{"input": text, "output": label, "instruction": instr} for text, label, instr in FINGPT_ROWS]
    rows.insert(4, {"input": "Kia's March sales rise 6% on SUV demand.", "output": "  ", "instruction": FINGPT_NEWS})
    rows.insert(9, dict(rows[1]))
    return rows


# ---------------------------------------------------------------------------------------------------------------
def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _csv(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _parquet(rows: list[dict], columns: list[str]) -> bytes:
    table = pa.table({c: pa.array([r.get(c) for r in rows], type=pa.string()) for c in columns})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


FILES = {
    "Josephgflowers/Finance-Instruct-500k/train.json": lambda: _jsonl(finance_instruct_rows()),
    "sujet-ai/Sujet-Finance-Instruct-177k/Sujet-Finance-Instruct-177k.csv": lambda: _csv(
        sujet_rows(), ["inputs", "answer", "system_prompt", "user_prompt", "Unnamed: 0", "task_type", "dataset"]),
    "KRX-Data/Won-Instruct/data/train-00000-of-00001.parquet": lambda: _parquet(
        won_rows(), ["prompt", "original_response", *WON_MODEL_COLUMNS]),
    "darkknight25/trading_dataset_v2/llm_trading_dataset_20250629_115817.jsonl": lambda: _jsonl(trading_rows()),
    "FinGPT/fingpt-sentiment-train/data/train-00000-of-00001.parquet": lambda: _parquet(
        fingpt_rows(), ["input", "output", "instruction"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/fixtures/stage1", help="fixtures root (default: %(default)s)")
    args = parser.parse_args()
    for rel, make in FILES.items():
        path = Path(args.out) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make())
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
